// A Node.js importer that reports its work into tm: a session that hears of
// aborts, a root task per import, one child per file with progress, and a
// failing file reported as such.
//
// It rides out a tm outage as tm_client's Python Producer does:
// - calls that are safe to repeat are retried while tm is unavailable
//   (UNAVAILABLE, or DEADLINE_EXCEEDED), with exponential backoff and jitter,
//   for up to TM_OUTAGE_SECONDS: RegisterModule, CreateTask (the task id is
//   chosen here, a UUIDv7, so a retried create returns the same task),
//   progress reports (they carry the absolute count) and FinishTask;
// - progress never waits for tm: while tm is away the latest value of each
//   task is held and sent once tm is back (or just before the task's finish);
// - a FinishTask whose reply was lost (a retry finds the task finished) or
//   that gave up asks tm for the task's status to see whether it landed;
// - the session stream is resumed with the same session id after a reconnect
//   (a new session is opened only if tm let the old one expire);
// - if tm stays away longer than TM_OUTAGE_SECONDS, that is logged and the
//   import goes on unreported: the process exits with the import's own
//   result, and tm fails the tasks left running once the session lease ends;
// - if tm ended a task without it (the session's lease ran out during an
//   outage shorter than TM_OUTAGE_SECONDS), that is logged, the finish
//   returns tm's final status, and children created under it go unreported.
//
// It reaches a tm server that checks its callers as the Python clients and
// the `tm` CLI do, from the same environment variables: TLS (the server's CA,
// or the system's), a client certificate for mutual TLS, and a bearer token
// sent as `authorization: Bearer <token>` on every call, over TLS or not (a
// tm server takes tokens on plaintext from loopback only).
//
// Usage: node producer.js [host:port]
// Environment: TM_OUTAGE_SECONDS (default 60): how long to wait for tm;
//              IMPORT_STEP_MS (default 50): how long importing 1000 rows takes;
//              TM_TOKEN: the bearer token, or else TM_TOKEN_FILE: a file
//                whose first line is the token;
//              TM_TLS=1: use TLS, trusting the system's CAs;
//              TM_TLS_CA: PEM file of the CA to trust (turns TLS on);
//              TM_TLS_CERT, TM_TLS_KEY: PEM client certificate and its key,
//                for mutual TLS (both or neither; they turn TLS on);
//              TM_TLS_SERVER_NAME: the name to check the server's certificate
//                for, in place of the host of host:port.
// Prints {"root", "children", "state"} as JSON (state null if tm never heard).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { setTimeout: sleep } = require('node:timers/promises');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const definition = protoLoader.loadSync(
  ['tm/v1/task_reporting.proto', 'tm/v1/task_manager.proto'].map((p) => path.join(PROTOS, p)),
  { includeDirs: [PROTOS], keepCase: true, longs: String, enums: String, defaults: true },
);
const tm = grpc.loadPackageDefinition(definition).tm.v1;

const OUTAGE_SECONDS = Number(process.env.TM_OUTAGE_SECONDS || 60);
const STEP_MS = Number(process.env.IMPORT_STEP_MS || 50);
const CALL_TIMEOUT_MS = 10_000; // a call tm does not answer in time is retried
const { UNAVAILABLE, DEADLINE_EXCEEDED, FAILED_PRECONDITION, NOT_FOUND } = grpc.status;
// Worth another try: tm is away (or restarting), or its answer did not come back.
const RETRYABLE = new Set([UNAVAILABLE, DEADLINE_EXCEEDED]);
// A refusal that may mean tm ended the task without this producer (or forgot it).
const REFUSED = new Set([FAILED_PRECONDITION, NOT_FOUND]);
const GONE = Symbol('gone'); // a task tm ended and forgot (a TTL of 0)
const FINAL_STATES = new Set(['TASK_STATE_DONE', 'TASK_STATE_FAILED', 'TASK_STATE_SUSPENDED']);

// grpc-js retries a short blip by itself for the calls plainly safe to repeat
// (FinishTask is not among them: its loop below must see each try). The loops
// in Reporter ride out longer outages.
const serviceConfig = {
  methodConfig: [{
    name: [
      { service: 'tm.v1.TaskReportingService', method: 'RegisterModule' },
      { service: 'tm.v1.TaskReportingService', method: 'CreateTask' },
      { service: 'tm.v1.TaskReportingService', method: 'ReportProgress' },
      { service: 'tm.v1.TaskManagerService', method: 'GetTaskStatus' },
    ],
    retryPolicy: {
      maxAttempts: 3,
      initialBackoff: '0.1s',
      maxBackoff: '0.5s',
      backoffMultiplier: 2,
      retryableStatusCodes: ['UNAVAILABLE'],
    },
  }],
};
const channelOptions = {
  'grpc.enable_retries': 1,
  'grpc.service_config': JSON.stringify(serviceConfig),
  // Reconnect within about 2 s of tm coming back (grpc-js waits up to 120 s).
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 2000,
  // Notice a tm that vanished without closing the connection (the session stream).
  'grpc.keepalive_time_ms': 20_000,
  'grpc.keepalive_timeout_ms': 10_000,
};

// The environment's TLS and token settings, checked before anything is sent:
// a setup that cannot work says so in one line (the token itself never).
const TRUE = ['1', 'true', 'yes', 'on'];
const FALSE = ['', '0', 'false', 'no', 'off'];

// A PEM file named by an environment variable (null when it is unset).
function readPem(variable, what, kind) {
  const file = process.env[variable];
  if (!file) return null;
  let data;
  try {
    data = fs.readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read the ${what} ${file} (${variable}): ${err.message}`);
  }
  if (!data.includes(`${kind}-----`)) {
    throw new Error(`the ${what} ${file} (${variable}) holds no PEM ${kind.toLowerCase()}`);
  }
  return data;
}

// TM_TOKEN, or else the first line of TM_TOKEN_FILE; null if neither is set.
function readToken() {
  let token = process.env.TM_TOKEN || null;
  let source = 'TM_TOKEN';
  const file = process.env.TM_TOKEN_FILE;
  if (!token && file) {
    source = `the token in ${file} (TM_TOKEN_FILE)`;
    try {
      token = fs.readFileSync(file, 'utf8').split('\n', 1)[0].trim();
    } catch (err) {
      throw new Error(`cannot read the token file ${file} (TM_TOKEN_FILE): ${err.message}`);
    }
    if (!token) throw new Error(`the token file ${file} (TM_TOKEN_FILE) has no token`);
  }
  // It travels as a header value: one word of printable ASCII.
  if (token && !/^[\x21-\x7e]+$/.test(token)) {
    throw new Error(`${source} has whitespace, or a character that is not printable ASCII`);
  }
  return token;
}

// Adds the token to every call, unary or stream, unless a call brings its own.
function tokenInterceptor(header) {
  return (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      if (metadata.get('authorization').length === 0) metadata.set('authorization', header);
      next(metadata, listener);
    },
  });
}

// The channel credentials, channel options and interceptors the environment asks for.
function connection() {
  const ca = readPem('TM_TLS_CA', 'TLS CA certificate', 'CERTIFICATE');
  const cert = readPem('TM_TLS_CERT', 'TLS client certificate', 'CERTIFICATE');
  const key = readPem('TM_TLS_KEY', 'TLS client key', 'PRIVATE KEY');
  if (!cert !== !key) throw new Error('mutual TLS needs both TM_TLS_CERT and TM_TLS_KEY');
  const flag = (process.env.TM_TLS || '').trim().toLowerCase();
  if (!TRUE.includes(flag) && !FALSE.includes(flag)) {
    throw new Error(`TM_TLS must be 1/true or 0/false, not '${process.env.TM_TLS}'`);
  }
  const tls = Boolean(ca || cert) || TRUE.includes(flag);
  const options = { ...channelOptions };
  const serverName = process.env.TM_TLS_SERVER_NAME;
  if (serverName) {
    if (!tls) throw new Error(`TM_TLS_SERVER_NAME is set but TLS is off: set TM_TLS or TM_TLS_CA`);
    options['grpc.ssl_target_name_override'] = serverName;
  }
  // createSsl with no CA trusts the system's roots.
  const credentials = tls
    ? grpc.credentials.createSsl(ca, key, cert)
    : grpc.credentials.createInsecure();
  // Not createFromMetadataGenerator: grpc-js sends call credentials on TLS
  // channels only, and the token must reach a plaintext loopback tm too.
  const token = readToken();
  const interceptors = token ? [tokenInterceptor(`Bearer ${token}`)] : [];
  return { credentials, options, interceptors };
}

// A time-ordered UUID (version 7): 48 bits of Unix milliseconds, then random bits.
function uuidv7() {
  const bytes = crypto.randomBytes(16);
  bytes.writeUIntBE(Date.now(), 0, 6);
  bytes[6] = (bytes[6] & 0x0f) | 0x70; // version 7
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10
  return bytes.toString('hex').replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5');
}

// Exponential backoff with full jitter (up to 50 ms, doubling to 2 s) until
// `seconds` have passed: each call waits, then resolves false once time is up.
function backoff(seconds) {
  const deadline = Date.now() + seconds * 1000;
  let cap = 50;
  return async () => {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    await sleep(Math.min(left, Math.random() * cap));
    cap = Math.min(cap * 2, 2000);
    return true;
  };
}

const log = (message) => console.error(`producer: ${message}`);

// Reports one module's tasks into tm, riding out tm's outages.
class Reporter {
  sessionId = '';
  offline = false; // tm stayed away past the limit: nothing is reported any more
  #module;
  #reporting;
  #manager;
  #aborted = new Set(); // tasks tm asked to abort
  #held = new Map(); // task id -> the latest progress report not yet sent
  #sending = new Map(); // task id -> the loop sending its held progress
  #unreported = new Set(); // children tm would not take: their parent ended there
  #endedLogged = new Set(); // tasks whose end in tm was logged
  #stream = null;
  #sessionWait = backoff(Infinity); // between tries to open the session stream
  #sessionOpened = () => {};
  #closed = false;

  constructor(target, module) {
    this.#module = module;
    const { credentials, options, interceptors } = connection();
    this.#reporting = new tm.TaskReportingService(target, credentials, {
      ...options,
      interceptors,
    });
    this.#manager = new tm.TaskManagerService(target, credentials, {
      channelOverride: this.#reporting.getChannel(),
      interceptors,
    });
  }

  // One unary call, with a deadline.
  #call(client, method, request) {
    const deadline = Date.now() + CALL_TIMEOUT_MS;
    return new Promise((resolve, reject) =>
      client[method](request, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply))));
  }

  // A call that is safe to repeat, retried while tm is away (up to the limit).
  async #patient(method, request) {
    const wait = backoff(OUTAGE_SECONDS);
    for (;;) {
      try {
        return await this.#call(this.#reporting, method, request);
      } catch (err) {
        if (!RETRYABLE.has(err.code) || this.#closed || !(await wait())) throw err;
      }
    }
  }

  // tm stayed away past the limit: says so once, and stops reporting.
  #giveUp(why) {
    if (!this.offline) {
      log(`tm stayed unavailable for ${OUTAGE_SECONDS}s (${why}); the import goes on unreported`);
    }
    this.offline = true;
    this.#held.clear();
    this.#stream?.cancel();
  }

  // Registers the module and opens the session; gives up after the limit.
  async start() {
    try {
      await this.#patient('RegisterModule', { module: this.#module });
    } catch (err) {
      if (!RETRYABLE.has(err.code)) throw err;
      this.#giveUp(err.details);
      return;
    }
    const opened = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), OUTAGE_SECONDS * 1000);
      this.#sessionOpened = () => { clearTimeout(timer); resolve(true); };
      this.#openSession();
    });
    if (!opened) this.#giveUp('no session stream');
  }

  // The session stream: tm pushes abort requests on it. A broken stream is
  // opened again with the same session id, which resumes the session.
  #openSession() {
    const stream = this.#reporting.OpenSession({ session_id: this.sessionId });
    let open = false;
    this.#stream = stream;
    stream.on('data', (message) => {
      if (message.opened) {
        if (message.opened.resumed) log(`session ${message.opened.session_id} resumed`);
        this.sessionId = message.opened.session_id;
        this.#sessionWait = backoff(Infinity);
        open = true;
        this.#sessionOpened();
      }
      if (message.abort_requested) this.#aborted.add(message.abort_requested.task_id);
    });
    stream.on('error', () => {}); // its status, below, says what to do
    stream.on('status', async ({ code, details }) => {
      if (this.#closed || this.offline) return;
      if (code === NOT_FOUND) {
        // tm failed the session's tasks when its lease ran out: start afresh.
        log(`session ${this.sessionId} expired (${details}); opening a new one`);
        this.sessionId = '';
      } else if (open) {
        log(`session stream broke (${details}); resuming session ${this.sessionId}`);
      }
      await this.#sessionWait();
      if (!this.#closed && !this.offline) this.#openSession();
    });
  }

  abortRequested(taskId) {
    return this.#aborted.has(taskId);
  }

  // Creates and starts a task; resolves with its id, known even if tm is away.
  async createTask(fields) {
    const id = uuidv7();
    if (this.offline) return id;
    const request = {
      ...fields, module: this.#module, task_id: id, session_id: this.sessionId, start: true,
    };
    const parent = fields.parent_id;
    if (parent && this.#unreported.has(parent)) {
      this.#unreported.add(id);
      return id;
    }
    try {
      const { status } = await this.#patient('CreateTask', request);
      if (status.abort_requested) this.#aborted.add(id);
    } catch (err) {
      if (parent && REFUSED.has(err.code) && (await this.#endedInTm(parent))) {
        this.#unreported.add(id); // tm takes no child of a finished task: the work goes on
        return id;
      }
      if (!RETRYABLE.has(err.code)) throw err;
      this.#giveUp(err.details);
    }
    return id;
  }

  // Reports a task's progress without waiting for tm: the latest value is
  // held until it is sent, however long tm is away.
  progress(taskId, completed) {
    if (this.offline || this.#unreported.has(taskId)) return;
    this.#held.set(taskId, { task_id: taskId, completed });
    if (!this.#sending.has(taskId)) this.#sending.set(taskId, this.#sendHeld(taskId));
  }

  async #sendHeld(taskId) {
    let wait = backoff(Infinity);
    while (this.#held.has(taskId) && !this.#closed) {
      const request = this.#held.get(taskId);
      try {
        const reply = await this.#call(this.#reporting, 'ReportProgress', request);
        if (reply.abort_requested) this.#aborted.add(taskId);
        if (this.#held.get(taskId) === request) this.#held.delete(taskId);
        wait = backoff(Infinity);
      } catch (err) {
        if (RETRYABLE.has(err.code)) {
          await wait(); // tm is away: try again (with the latest value) later
        } else {
          log(`dropped progress of task ${taskId}: ${err.details}`);
          if (this.#held.get(taskId) === request) this.#held.delete(taskId);
        }
      }
    }
    this.#sending.delete(taskId);
  }

  // Finishes a task (failed if `error` is given), after its held progress;
  // resolves with its final status, or null if tm stayed away.
  async finish(taskId, error) {
    if (this.offline || this.#unreported.delete(taskId)) return null;
    const held = this.#held.get(taskId);
    this.#held.delete(taskId);
    await this.#sending.get(taskId); // a report already on its way lands first
    const request = { task_id: taskId, ...(error === undefined ? {} : { error }) };
    try {
      if (held) {
        try {
          await this.#patient('ReportProgress', held);
        } catch (err) {
          if (!REFUSED.has(err.code)) throw err; // refused: the task ended in tm, as below
        }
      }
      return await this.#finish(request);
    } catch (err) {
      if (REFUSED.has(err.code)) {
        const ended = await this.#endedInTm(taskId);
        if (ended) return ended === GONE ? null : ended;
      }
      if (!RETRYABLE.has(err.code)) throw err;
      this.#giveUp(err.details);
      return null;
    }
  }

  // After a refusal: tm's final status if tm ended the task without this
  // producer (GONE if it forgot it too), else null.
  async #endedInTm(taskId) {
    let status = GONE;
    try {
      ({ status } = await this.#call(this.#manager, 'GetTaskStatus', { task_id: taskId }));
    } catch (err) {
      if (err.code !== NOT_FOUND) return null;
    }
    if (status !== GONE && !FINAL_STATES.has(status.state)) return null;
    if (!this.#endedLogged.has(taskId)) {
      this.#endedLogged.add(taskId);
      const how = status === GONE ? 'and forgot it' : `(${status.state}: ${status.error})`;
      log(`tm had ended task ${taskId} ${how} without this producer (its session's lease ran out `
        + 'while tm was out of reach, or a finish\'s reply was lost): its reports are dropped '
        + 'and its finish is tm\'s');
    }
    return status;
  }

  async #finish(request) {
    const wait = backoff(OUTAGE_SECONDS);
    let retried = false;
    for (;;) {
      try {
        return (await this.#call(this.#reporting, 'FinishTask', request)).status;
      } catch (err) {
        // A retry that finds the task finished: an earlier try went through
        // and only its reply was lost. Before giving up, the same question:
        // did one of the tries land?
        const lost = err.code === FAILED_PRECONDITION && retried;
        if (!lost && !RETRYABLE.has(err.code)) throw err;
        if (lost || !(await wait())) {
          const status = await this.#finalStatus(request.task_id);
          if (status) return status;
          throw err;
        }
        retried = true;
      }
    }
  }

  // The task's status if it has finished, else null (also if tm cannot say).
  async #finalStatus(taskId) {
    try {
      const { status } = await this.#call(this.#manager, 'GetTaskStatus', { task_id: taskId });
      return FINAL_STATES.has(status.state) ? status : null;
    } catch {
      return null;
    }
  }

  // Ends the session cleanly (no lease runs) and closes the channel.
  async close() {
    this.#closed = true;
    if (this.sessionId && !this.offline) {
      try {
        await this.#call(this.#reporting, 'CloseSession', { session_id: this.sessionId });
      } catch (err) {
        log(`could not close session ${this.sessionId} (${err.details}); its lease does the rest`);
      }
    }
    this.#stream?.cancel();
    this.#reporting.close();
  }
}

async function importFile(reporter, parentId, file) {
  const id = await reporter.createTask({
    type: 'import', scope: 'file', entity: file.name,
    parent_id: parentId, progress_units: 'rows', progress_total: file.rows,
  });
  for (let done = 1000; done <= file.rows; done += 1000) {
    if (reporter.abortRequested(id)) break;
    await sleep(STEP_MS); // stands for reading and writing 1000 rows
    reporter.progress(id, done); // never waits for tm
  }
  await reporter.finish(id, file.broken ? `${file.name}: malformed row 4213` : undefined);
  return id;
}

async function main() {
  const target = process.argv[2] || '127.0.0.1:50051';
  const reporter = new Reporter(target, 'importer');
  await reporter.start();
  const files = [
    { name: 'users.csv', rows: 3000 },
    { name: 'orders.csv', rows: 5000 },
    { name: 'broken.csv', rows: 2000, broken: true },
  ];
  const root = await reporter.createTask({
    type: 'import', scope: 'batch', keyspace: 'shop',
    abortable: true, user_task: true, progress_units: 'rows',
  });
  const children = [];
  for (const file of files) children.push(await importFile(reporter, root, file));
  const final = await reporter.finish(root);
  // A clean close: the server ends the session (and its stream) at once, no lease.
  await reporter.close();
  // The import's own result decides the exit status (0), whether tm heard of it or not.
  console.log(JSON.stringify({ root, children, state: final ? final.state : null }));
}

main().catch((err) => {
  console.error(`producer failed: ${err.message}`);
  process.exit(1);
});
