"""A small CNI plugin for runtime tests: it records every call and does what its configuration says.

Keys it reads from its configuration:
  log         file to append one JSON line per call to ({command, env, stdin})
  result      the result to print on ADD when there is no prevResult
  addIf       on ADD, append an interface with this name to prevResult
  failOn      a command to fail on, with failCode / failMsg
  sleep       seconds to sleep (after starting a child that sleeps too; its pid goes to `childPid`)
  garbage     print this text instead of a result
VERSION answers the list in `<executable>.versions` when that file exists.
"""

import json
import os
import subprocess
import sys
import time

command = os.environ.get("CNI_COMMAND", "")
stdin = sys.stdin.read()
try:
    conf = json.loads(stdin) if stdin else {}
except ValueError:
    conf = {}
if conf.get("log"):
    with open(conf["log"], "a") as fh:
        env = {k: v for k, v in os.environ.items() if k.startswith(("CNI_", "PYCNI_GC_REPORT"))}
        fh.write(json.dumps({"command": command, "env": env, "stdin": conf}) + "\n")
if command == "VERSION":
    versions = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    if os.path.exists(sys.argv[0] + ".versions"):
        with open(sys.argv[0] + ".versions") as fh:
            versions = json.load(fh)
    print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": versions}))
    sys.exit(0)
if conf.get("sleep"):
    child = subprocess.Popen(["sleep", str(conf["sleep"] * 10)])
    with open(conf["childPid"], "w") as fh:
        fh.write(str(child.pid))
    time.sleep(conf["sleep"])
if conf.get("failOn") == command:
    print(
        json.dumps(
            {"cniVersion": conf.get("cniVersion"), "code": conf.get("failCode", 7), "msg": conf.get("failMsg", "told to fail")}
        )
    )
    sys.exit(1)
if conf.get("garbage"):
    print(conf["garbage"])
    sys.exit(conf.get("garbageExit", 0))
if command == "ADD":
    prev = conf.get("prevResult")
    if prev is not None:
        result = dict(prev)
        if conf.get("addIf"):
            result["interfaces"] = [*result.get("interfaces", []), {"name": conf["addIf"]}]
    else:
        result = dict(conf.get("result") or {"ips": [{"address": "10.9.0.2/24"}]})
        result.setdefault("cniVersion", conf.get("cniVersion"))
    print(json.dumps(result))
