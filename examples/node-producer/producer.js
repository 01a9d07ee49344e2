// A Node.js importer that reports its work into tm: a session that hears of
// aborts, a root task per import, one child per file with progress, and a
// failing file reported as such. Usage: node producer.js [host:port]
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const definition = protoLoader.loadSync(path.join(PROTOS, 'tm/v1/task_reporting.proto'), {
  includeDirs: [PROTOS],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const tm = grpc.loadPackageDefinition(definition).tm.v1;

const target = process.argv[2] || '127.0.0.1:50051';
const client = new tm.TaskReportingService(target, grpc.credentials.createInsecure());

// Promisified unary calls.
const call = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, (err, response) => (err ? reject(err) : resolve(response))));

// Opens a producer session; resolves with its id once the server confirms it.
function openSession(aborted) {
  return new Promise((resolve, reject) => {
    const stream = client.OpenSession({});
    stream.on('data', (message) => {
      if (message.opened) resolve({ id: message.opened.session_id, stream });
      if (message.abort_requested) aborted.add(message.abort_requested.task_id);
    });
    stream.on('error', (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

async function importFile(session, parentId, file, aborted) {
  const { status } = await call('CreateTask', {
    module: 'importer', type: 'import', scope: 'file', entity: file.name,
    parent_id: parentId, progress_units: 'rows', progress_total: file.rows,
    session_id: session.id, start: true,
  });
  for (let done = 1000; done <= file.rows; done += 1000) {
    if (aborted.has(status.id)) break;
    await call('ReportProgress', { task_id: status.id, completed: done });
  }
  const request = { task_id: status.id };
  if (file.broken) request.error = `${file.name}: malformed row 4213`;
  await call('FinishTask', request);
  return status.id;
}

async function main() {
  const aborted = new Set();
  const session = await openSession(aborted);
  const files = [
    { name: 'users.csv', rows: 3000 },
    { name: 'orders.csv', rows: 5000 },
    { name: 'broken.csv', rows: 2000, broken: true },
  ];
  const { status: root } = await call('CreateTask', {
    module: 'importer', type: 'import', scope: 'batch', keyspace: 'shop',
    abortable: true, user_task: true, progress_units: 'rows',
    session_id: session.id, start: true,
  });
  const children = [];
  for (const file of files) children.push(await importFile(session, root.id, file, aborted));
  const { status: final } = await call('FinishTask', { task_id: root.id });
  // A clean close: the server ends the session (and its stream) at once, no lease.
  await call('CloseSession', { session_id: session.id });
  session.stream.cancel();
  client.close();
  console.log(JSON.stringify({ root: root.id, children, state: final.state }));
}

main().catch((err) => {
  console.error(`producer failed: ${err.message}`);
  process.exit(1);
});
