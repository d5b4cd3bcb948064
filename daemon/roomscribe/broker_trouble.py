"""What is wrong with the broker connection, told from the events alone (no I/O).

The publisher (publish.py) and the tools that log in once (broker_login.py) feed these
times and reason codes; nothing here touches a socket, so the tests need none.
"""

from __future__ import annotations

# How long a login may go unanswered before it is said: a tool gives up then, the
# daemon says so and goes on waiting.
LOGIN_TIMEOUT_S = 10.0


def silent_hint(tls: bool) -> str:
    """Why a port takes the connection and never answers the login, most often (a
    broker that does not answer MQTT 5 is asked in 3.1.1 next: LoginVersion)."""
    if tls:
        return "is it the broker's MQTT port?"
    return "is it the broker's MQTT port? A TLS port, often 8883, needs mqtt.tls = true"


# CONNACK "Unsupported protocol version": MQTT 5's reason code, and what paho makes of
# 3.1.1's return code 1, which brokers without MQTT 5 send to an MQTT 5 login
# (Mosquitto 1.x, Aedes as Node-RED runs it).
UNSUPPORTED_VERSION = 132


def older_protocol_note(where: str) -> str:
    return (f"mqtt: {where} does not speak MQTT 5: using MQTT 3.1.1 (no message expiry "
            'on the broker; mqtt.protocol = "3.1.1" says so and skips the first try)')


class LoginVersion:
    """The MQTT version to log in with, told from how logins end (no I/O: answers in,
    a wait before the next login out).

    The configured version first. A broker that refuses MQTT 5 as a version it does not
    speak gets 3.1.1. One that drops an MQTT 5 login unanswered may not speak it either
    (RabbitMQ before 3.13 closes the connection; amqtt closes it after seconds), and
    neither may a TLS port or a broker still starting: while logins go unanswered the
    two versions take turns, backing off. A 3.1.1 login answered after that is held
    against MQTT 5 once more, so that a broker that was only starting (a Docker port
    takes connections before the broker in it listens) keeps MQTT 5; if MQTT 5 goes
    unanswered again, 3.1.1 stays. A refused password is an answer: it stays wrong in
    any version.
    """

    def __init__(self, configured: str, wait_min_s: float, wait_max_s: float) -> None:
        self.configured = configured
        self.current = configured
        self._settled = configured != "5"
        self._wait_s = (wait_min_s, max(wait_min_s, wait_max_s))
        self._turns = 0  # unanswered logins in a row
        self._checked = False  # MQTT 5 tried again after 3.1.1 was answered

    @property
    def fell_back(self) -> bool:
        return self.current != self.configured

    def answered(self, reason_code: int) -> float | None:
        """The broker answered a login (CONNACK). The wait before logging in with
        the other version, or None to go on with this one."""
        self._turns = 0
        if self.current == "5" and reason_code == UNSUPPORTED_VERSION:
            self.current, self._settled = "3.1.1", True
            return self._wait_s[0]
        if self._settled or self.current == "5" or self._checked:
            self._settled = True
            return None
        self._checked, self.current = True, "5"
        return self._wait_s[0]

    def unanswered(self) -> float | None:
        """The connection ended before its login was answered: as `answered`."""
        if self._settled:
            return None
        if self._checked and self.current == "5":
            self.current, self._settled = "3.1.1", True
            return self._wait_s[0]
        self.current = "3.1.1" if self.current == "5" else "5"
        self._turns += 1
        low, high = self._wait_s
        return float(min(high, low * 2 ** min(self._turns - 1, 16)))


# MQTT 5's DISCONNECT reason "Session taken over" (Mosquitto 2.0.11 sends none), and
# what paho reports for a connection closed without a DISCONNECT (or 3.1.1's).
_TAKEN_OVER = 142
_UNSPECIFIED = 128


class ClashWatch:
    """Tells another client with our client id from an outage (no I/O: times in).

    A broker drops the older of two clients with one client id whenever the other
    logs in, so two daemons with one device.id take the connection in turn, each
    holding it for about `reconnect_min_s`. An outage or a broker restart drops a
    connection that had lasted; this drops, again and again, one just made.
    """

    SHORT_S = 10.0  # a connection lost sooner than this after its login
    IN_A_ROW = 3  # ... this many times running: a broker restart is once

    def __init__(self) -> None:
        self._since: float | None = None
        self._short = 0
        self.suspected = False

    def connected(self, now: float) -> None:
        self._since = now

    def lost(self, now: float, reason_code: int) -> bool:
        """True when this loss, with those before it, looks like a clash."""
        short = self._since is not None and now - self._since < self.SHORT_S
        self._since = None
        # Only a connection dropped without a word (paho's "Unspecified error") counts:
        # a broker that gives a reason (an ACL, a packet too large) has said what it is.
        self._short = self._short + 1 if short and reason_code == _UNSPECIFIED else 0
        self.suspected = reason_code == _TAKEN_OVER or self._short >= self.IN_A_ROW
        return self.suspected

    def connect_failed(self) -> None:
        """A login that failed: the broker (or the way to it) is down, which is an
        outage. In a clash every login succeeds at once."""
        self._short = 0
        self.suspected = False

    def settled(self, now: float) -> bool:
        """True once when a suspected clash is over: a connection has lasted."""
        if not self.suspected or self._since is None or now - self._since < self.SHORT_S:
            return False
        self.suspected = False
        self._short = 0
        return True
