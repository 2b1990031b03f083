#!/usr/bin/env python3
"""A fake CNI plugin for tests.

Appends one JSON line per call to $FAKE_CNI_LOG: {"type", "env": CNI_*, "stdin": parsed conf}.
Behaviour is steered by keys in its own plugin config (so each chain entry can differ):

  "fail": {"ADD": {"code": 11, "msg": "...", "details": "..."}}   JSON error + exit 1
  "crash": {"DEL": "some stderr text"}                            no JSON, stderr, exit 2
  "sleep": 5                                                      sleep before answering
  "result": {...}                                                 printed on ADD (default below)

On ADD without "result" it passes prevResult through, adding one interface and one IP, so
chaining is visible in the output.
"""

import json
import os
import sys
import time


def main() -> int:
    conf = json.loads(sys.stdin.read() or "{}")
    cmd = os.environ.get("CNI_COMMAND", "")
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    with open(os.environ["FAKE_CNI_LOG"], "a") as log:
        log.write(json.dumps({"type": os.path.basename(sys.argv[0]), "env": env, "stdin": conf}) + "\n")
    if conf.get("sleep"):
        time.sleep(conf["sleep"])
    if cmd in conf.get("crash", {}):
        sys.stderr.write(conf["crash"][cmd])
        return 2
    if cmd in conf.get("fail", {}):
        err = {"cniVersion": conf.get("cniVersion"), **conf["fail"][cmd]}
        print(json.dumps(err))
        return 1
    if cmd == "VERSION":
        print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}))
        return 0
    if cmd != "ADD":
        return 0
    if "result" in conf:
        print(json.dumps(conf["result"]))
        return 0
    prev = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}
    res = json.loads(json.dumps(prev))
    res["cniVersion"] = conf["cniVersion"]
    n = len(res["interfaces"])
    res["interfaces"].append(
        {
            "name": env.get("CNI_IFNAME", "eth0") if n == 0 else f"x{n}",
            "mac": f"02:00:00:00:00:0{n}",
            "sandbox": env.get("CNI_NETNS", ""),
        }
    )
    res["ips"].append({"address": f"10.9.0.{n + 2}/24", "gateway": "10.9.0.1", "interface": n})
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
