"""A realistic fake of Just One API's ``GET /api/xiaohongshu/get-user/v4`` (and ``/v3``).

It serves ``make run`` without a token, every end-to-end test and the benchmark, on loopback.

Rules it follows:

- A request passes these checks in order; the first that fires answers it: the version is in
  ``gone_versions`` (HTTP 404 HTML) → the token is not one of ``config.valid_tokens``
  (``token`` and ``tokens``; code 100) → the daily quota is used up (code 303) → the token
  bucket (``rate_limit`` a second, or what ``rate_schedule`` says for that second of the
  server's life, e.g. 50/s, then 10/s from 20 s, then 80/s from 40 s; a burst of one second's
  worth) is empty (code 302, HTTP 200): one bucket for the server, or with
  ``rate_scope="token"`` one per valid token, as each real account has its own limit →
  ``userId`` is not 24 hex characters (code 400) → the id's script, then the drift plan (an
  id gone or not yet born on the sandbox's date), then ``never_succeed`` (code 500 for ever),
  then ``fault_mix`` (the id's first answered call only) → success.  v3 also accepts a
  profile URL as ``userId``.  Every code-302 answer, limiter or scripted, carries
  ``Retry-After`` when ``retry_after`` is set.  Latency is slept after the decision, so a
  client that gives up still paid for its call; with ``capacity`` N, past N requests in flight
  it is the drawn latency x (in flight / N), as a server that queues.
- The ledger is exact and written before any wait: every API request counts in ``calls`` and
  ``calls_by_id`` (what the vendor would bill); ``successes_by_id`` counts the answers a correct
  client stores as a profile (modes ``ok``, ``slow``, ``display_counts``, ``code_string``), and
  those are what the daily quota counts (one quota for the server, whatever the scope of the
  rate); ``calls_by_token`` and ``rate_limited_by_token`` count the calls and the
  limiter's 302s of each valid token.  ``by_code`` keys are the body's business code, the HTTP
  status for non-JSON answers (and ``no_code``), or -1 when no complete answer was sent.  It
  also keeps the most requests held at once (``max_in_flight``), the most that arrived within
  any one second (``max_calls_per_second``, a sliding window) and the median and 90th
  percentile of the latencies it applied: what a client's caps and a controller's queue look
  like from the server.
- A script's modes apply to the id's next calls that get past the checks above, from the moment
  it is set; after the list the id behaves normally.  Fault and ``never_succeed`` draws are
  deterministic: a BLAKE2 hash of (seed, purpose, id), never ``hash()``, which changes between
  processes.
- Profiles are deterministic per (id, seed) and built from the real seed sample (a copy lives in
  ``pipeline/sandbox/data``): counters vary but keep the facts real samples show
  (interaction count == liked + collected, fans/follows equal their interactions entries,
  ``ndiscovery == note_num_stat.posted``); tags, privacy, optional keys and locations vary.
- The hot path is cheap: a profile's ``data`` bytes are generated once and kept in an LRU cache
  (per id and seed; with drift per id and day), the envelope is joined as bytes, ``recordTime``
  is formatted once a second, access log is off.  ``build_profile`` (and ``DriftModel.profile``)
  give the same data to tests that want profiles without a server.
- Messages never echo the token.

Modes (for ``scripts``, ``fault_mix`` and ``POST /_sandbox/script``):

=================  ==========================================================================
mode               answer
=================  ==========================================================================
``ok``             HTTP 200, code 0, the id's profile
``code:N``         HTTP 200, JSON ``{"code": N, "message": ..., "data": null}``;
                   ``301``, ``500``, ``503``, ... are aliases
``status:S:N``     HTTP S with the same JSON body (as newer vendor specs declare)
``htmlS``          HTTP S, ``text/html`` error page as a proxy sends; ``html502``, ``html503``;
                   ``502`` is an alias of ``html502``
``gone``           HTTP 404 ``text/html``: the endpoint itself is removed
``reset``          the connection is closed (RST) without any response
``reset_mid``      headers and half the body, then the connection is aborted
``truncated``      ``Content-Length`` of the whole body, part of it, then a clean close
``drip``           headers, then the body one byte a second (past any sane read timeout)
``huge``           a valid success body of about 8 MB (a giant ``desc``)
``deep``           success, ``data.nested`` is an array nested 5000 levels deep
``bigint``         success, ``data.fans`` is an integer of 5000 digits
``wrong_types``    success, ``fans: "abc"``, ``tags: {}``, ``interactions: null``, ``level: "7"``
``code_string``    success with ``"code": "0"`` (as older specs declared)
``data_null``      code 0, ``data: null``
``empty_data``     code 0, ``data: {}``
``no_result``      code 0, ``data: {"result": {"success": false, "code": -1, ...}}``
``no_code``        the success envelope without ``code``
``not_json``       HTTP 200, ``text/html`` page
``display_counts``  success, ``interactions[].count`` as display strings (``"1.2万"``, ``"10万+"``)
``other_user``     code 0 with the profile of another id (the asked id plus one)
``slow``           success after max(2 × the latency's maximum, 1 s)
=================  ==========================================================================

Drift (``SandboxConfig.drift``, ``pipeline.sandbox.drift``): without it every date answers the
same counters.  With a ``DriftPlan`` (a start date and scripted events) the profile of an id on
a date is a function of (seed, id, date, plan): day 0 is the plain profile, then each creator
grows at its own rate (6% flat, 8% shrinking slightly, the rest 0.1–2% followers a day), exact
integers that keep the facts above, and the plan's events happen on their dates and persist.
An event replaces that day's organic change of what it touches, so the day-over-day delta is
exactly its amount.  ``DriftPlan.demo(ids, start)`` spreads one of each over days 3–6 (its
docstring says which id gets which); plans load from and dump to JSON
(``{"start": "2026-12-01", "events": [{"user_id", "date", "kind", "params"}]}``).
``drift_config_for(snapshot_date, ids, start=...)`` is the config for one snapshot of a series.

======================  ==========================================================================
event                   effect on its date (``params``, defaults)
======================  ==========================================================================
``spike``               followers +50,000 (``followers``)
``round_jump``          followers +10,000 exactly (``followers``)
``purge``               followers −30% (``percent``)
``follows_spike``       follows +2,000 (``follows``)
``rename``              a new ``nickname`` (``nickname``; default drawn)
``bio``                 a new ``desc`` and ``user_desc_info.desc`` (``desc``; default drawn)
``notes_deleted``       notes posted −5 (``notes``)
``gone``                code 0 with ``data: {}``; ``{"code": 404}``: HTTP 200, code 404 "not found"
``born``                code 404 before the date, the normal profile from it (a new id appears)
``fans_no_engagement``  followers +20,000 while liked and collected stay flat (``followers``)
======================  ==========================================================================

The sandbox's date is server state, never part of a request (the real API takes none):
``SandboxConfig.as_of`` pins it, ``Sandbox.set_date`` and ``POST /_sandbox/date``
``{"date": "YYYY-MM-DD"}`` (``null``: follow the clock) move a running server, so one process
serves a week; without ``as_of`` each request is answered for its UTC date.  ``GET
/_sandbox/date`` tells the date, its plan day and the start.  Gone and unborn answers are not
successes in the ledger, which spans every date the server answered for.

``GET /_sandbox/stats`` returns the ledger as JSON; ``POST /_sandbox/script`` takes
``{user_id: [modes]}``, so a test can drive a sandbox running in another process.
"""

from pipeline.errors import SandboxListenError, SandboxOptionError
from pipeline.sandbox.config import SandboxConfig, SandboxStats, drift_config_for, parse_mode
from pipeline.sandbox.drift import EVENT_KINDS, DriftEvent, DriftModel, DriftPlan, Growth, growth
from pipeline.sandbox.profiles import TOAST_FANS, TOAST_FOLLOWS, build_profile, display_count
from pipeline.sandbox.server import Sandbox, make_app, serve

__all__ = [
    "EVENT_KINDS",
    "TOAST_FANS",
    "TOAST_FOLLOWS",
    "DriftEvent",
    "DriftModel",
    "DriftPlan",
    "Growth",
    "Sandbox",
    "SandboxConfig",
    "SandboxListenError",
    "SandboxOptionError",
    "SandboxStats",
    "build_profile",
    "display_count",
    "drift_config_for",
    "growth",
    "make_app",
    "parse_mode",
    "serve",
]
