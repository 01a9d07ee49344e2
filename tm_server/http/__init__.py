"""The HTTP side of a tm server (``--http-address``): ScyllaDB's REST API, streams, dashboard.

``endpoint`` serves the port; ``rest`` has ScyllaDB's ``/task_manager``
paths, ``own`` tm's ``/tm/v1`` ones, ``streams`` the Server-Sent Events;
``routing`` checks every route as the RPC it stands for; ``shapes`` and
``errors`` are the JSON of answers and of errors; ``static`` the dashboard.
"""

from .endpoint import HttpEndpoint, HttpParts

__all__ = ["HttpEndpoint", "HttpParts"]
