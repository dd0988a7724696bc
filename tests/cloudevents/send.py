"""The official CloudEvents Python SDK (PyPI `cloudevents`) as a client of POST /v1/events.

One event in binary mode and one in structured mode, each a CloudEvent built and serialized by the
SDK (cloudevents.core: to_binary, to_structured with the JSON format). Run by the e2e test
`cloudevents_sdk` with CE_URL (the ingest), CE_KEY (an ingest key) and CE_RUN (an id prefix);
prints one JSON line per request and exits non-zero unless every request was accepted.
"""

import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone

from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

URL = os.environ["CE_URL"] + "/v1/events"
KEY = os.environ["CE_KEY"]
RUN = os.environ["CE_RUN"]


def event(id, subject, endpoint, quantity, **extensions):
    attributes = {
        "id": f"{RUN}-{id}",
        "source": "/services/python-sdk",
        "type": "api_call",
        "subject": subject,
        "time": datetime.now(timezone.utc),
        "datacontenttype": "application/json",
        "dataschema": "https://metering.example/schemas/api_call.json",
        **extensions,
    }
    return CloudEvent(attributes=attributes, data={"endpoint": endpoint, "quantity": quantity})


def send(mode, message):
    headers = dict(message.headers)
    headers["Authorization"] = "Bearer " + KEY
    request = urllib.request.Request(URL, data=message.body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request) as r:
            status, body = r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        status, body = e.code, json.loads(e.read() or b"null")
    print(json.dumps({"mode": mode, "status": status, "headers": message.headers, "body": body}))
    return status == 202 and body.get("accepted") == 1


fmt = JSONFormat()
ok = [
    send("binary", to_binary(event("bin-1", "cust_py", "drill", 7, region="ap", tracestate="k=v w"), fmt)),
    send("structured", to_structured(event("str-1", "cust_py", "analyze", 1, region="eu", priority=9), fmt)),
]
sys.exit(0 if all(ok) else 1)
