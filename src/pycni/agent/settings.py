"""How a launcher uses the agent: `PYCNI_AGENT` in its environment, else `agent` in the
host's pycni configuration file, else `auto`.

Standard library only, and nothing the interpreter has not loaded: every launcher reads
this on every call (a missing file costs one failed open).

The file (`/etc/pycni/pycni.conf`; `PYCNI_CONF` names another, for tests) is `key = value`
lines; `#` starts a comment. Its keys:

    agent = auto | off | required | managed
    agent_idle_timeout = SECONDS     an on-demand agent exits after this long without a
                                     call (default 600; 0: never)

An unknown key or a value out of range is refused with the key and value named: a typo
must not silently change how every plugin call runs.
"""

from __future__ import annotations

USE_ENV = "PYCNI_AGENT"
CONF_ENV = "PYCNI_CONF"
DEFAULT_CONF = "/etc/pycni/pycni.conf"

AUTO = "auto"  # use the agent; start one when none answers
OFF = "off"  # always in-process (the benchmarks' cold path)
REQUIRED = "required"  # the agent or code 11: never in-process, never started here
# Use the agent when it answers, never start one: for an agent that something else runs
# (systemd without socket activation, a test's own agent), so that a launcher never races
# it for its socket while it restarts.
MANAGED = "managed"
MODES = (AUTO, OFF, REQUIRED, MANAGED)

IDLE_KEY = "agent_idle_timeout"
DEFAULT_ON_DEMAND_IDLE = 600.0  # ten minutes; a managed agent never idles out
_KEYS = ("agent", IDLE_KEY)


class SettingsError(Exception):
    """A setting with a value pycni does not know; the message names the key and the value.
    `code` is the CNI error code: 4 for the environment, 7 for the configuration file."""

    def __init__(self, msg: str, code: int = 7) -> None:
        super().__init__(msg)
        self.code = code


class Settings:
    __slots__ = ("idle_timeout", "mode", "source")

    def __init__(self, mode: str, source: str, idle_timeout: float) -> None:
        self.mode = mode
        self.source = source  # where the mode came from, for messages
        self.idle_timeout = idle_timeout


def read_conf(path: str) -> dict[str, str]:
    """The file's keys (empty when there is no file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise SettingsError(f"{path} line {number}: {raw.strip()!r} is not `key = value`")
        if key not in _KEYS:
            raise SettingsError(f"{path} line {number}: unknown key {key!r} (known: {', '.join(_KEYS)})")
        found[key] = value
    return found


def load(env: dict[bytes, bytes]) -> Settings:
    """The launcher's settings for this call; SettingsError when one is not valid."""
    path = (env.get(CONF_ENV.encode()) or DEFAULT_CONF.encode()).decode(errors="replace")
    conf = read_conf(path)
    mode, source = conf.get("agent", AUTO), f"agent in {path}"
    wanted = env.get(USE_ENV.encode(), b"").decode(errors="replace")
    if wanted:
        mode, source = wanted, USE_ENV
    if mode not in MODES:
        code = 4 if source == USE_ENV else 7
        raise SettingsError(f"{source} is {mode!r}: it must be one of {', '.join(MODES)}", code)
    idle = DEFAULT_ON_DEMAND_IDLE
    if IDLE_KEY in conf:
        try:
            idle = float(conf[IDLE_KEY])
        except ValueError:
            idle = -1.0
        if not 0 <= idle < 1e9:
            raise SettingsError(f"{IDLE_KEY} in {path} is {conf[IDLE_KEY]!r}: it must be a number of seconds, 0 or more")
    return Settings(mode, source, idle)
