#!/usr/bin/python3
"""quota_ext webhook relay: the outbox's events, POSTed one by one.

LISTENs on quota_ext_outbox (a wake-up only), reads the events with its
own cursor (quota_ext.event_poll), POSTs each to a URL with an HMAC-SHA256
signature, retries with exponential backoff until the receiver answers
2xx, and only then acknowledges it (quota_ext.event_ack).  Events go out
one at a time in delivery order, so a receiver sees each tenant's events
in order.  Killed at any point and started again, it resumes after the
last acknowledged event: nothing is lost.  The one event that was in
flight when it died may be POSTed again if the receiver had already
answered 2xx: receivers deduplicate by X-Quota-Event-Id (see README.md).

Configuration (environment):
  RELAY_DSN          libpq connection string (a quota_ext_admin login reads
                     every tenant's events; a login with a tenant context
                     would read its own)
  RELAY_URL          where to POST (http:// or https://)
  RELAY_SECRET       the shared HMAC key (required)
  RELAY_CONSUMER     cursor name (default webhook-relay)
  RELAY_BATCH        events per poll (default 100)
  RELAY_IDLE         seconds between polls without a notification
                     (default 5: events held back behind a long transaction
                     arrive without one)
  RELAY_MAX_BACKOFF  cap of the retry delay in seconds (default 60)
  RELAY_TIMEOUT      HTTP timeout in seconds (default 30)
"""
import hashlib
import hmac
import os
import select
import signal
import sys
import time
import urllib.error
import urllib.request

import psycopg

DSN = os.environ.get("RELAY_DSN", "")
URL = os.environ["RELAY_URL"]
SECRET = os.environ["RELAY_SECRET"].encode()
CONSUMER = os.environ.get("RELAY_CONSUMER", "webhook-relay")
BATCH = int(os.environ.get("RELAY_BATCH", "100"))
IDLE = float(os.environ.get("RELAY_IDLE", "5"))
MAX_BACKOFF = float(os.environ.get("RELAY_MAX_BACKOFF", "60"))
TIMEOUT = float(os.environ.get("RELAY_TIMEOUT", "30"))

running = True


def stop(signum, frame):
    global running
    running = False


def log(msg):
    print("relay: " + msg, file=sys.stderr, flush=True)


def sign(body):
    """X-Quota-Signature: sha256=HEX, the HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()


def post(event):
    """POST one event; True on 2xx."""
    body = event["body"].encode()
    req = urllib.request.Request(URL, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "X-Quota-Event-Id": str(event["event_id"]),
        "X-Quota-Event-Type": event["event_type"],
        "X-Quota-Signature": sign(body),
    })
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return 200 <= resp.status < 300
    except urllib.error.HTTPError as e:
        log("event %s: HTTP %s" % (event["event_id"], e.code))
    except (urllib.error.URLError, OSError) as e:
        log("event %s: %s" % (event["event_id"], e))
    return False


def deliver(conn, event):
    """POST until 2xx (backoff 0.5 s, doubling, capped), then acknowledge."""
    delay = 0.5
    while running:
        if post(event):
            conn.execute("SELECT quota_ext.event_ack(%s, %s)", (CONSUMER, event["event_id"]))
            return True
        time.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF)
    return False


def run(conn):
    conn.execute("LISTEN quota_ext_outbox")
    while running:
        # the body as the server renders it (jsonb: amounts stay exact)
        rows = conn.execute(
            "SELECT e.event_id, e.event_type, pg_catalog.to_jsonb(e)::text"
            "  FROM quota_ext.event_poll(%s, %s) e", (CONSUMER, BATCH)).fetchall()
        for r in rows:
            event = {"event_id": r[0], "event_type": r[1], "body": r[2]}
            if not deliver(conn, event):
                return
        if len(rows) < BATCH:
            # wait for a NOTIFY (read by the next query) or the idle timeout
            select.select([conn.fileno()], [], [], IDLE)


def main():
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = 0.5
    while running:
        try:
            with psycopg.connect(DSN, autocommit=True) as conn:
                log("connected, consumer %s, posting to %s" % (CONSUMER, URL))
                delay = 0.5
                run(conn)
        except psycopg.OperationalError as e:
            log("database: %s" % e)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
    return 0


if __name__ == "__main__":
    sys.exit(main())
