"""`python3 -m dsv3_client` (or `dsv3-py` once installed): the everyday dsv3ctl verbs.

    python3 -m dsv3_client submit CONFIG [--ranks N] [--name NAME] [--follow]
    python3 -m dsv3_client status [JOB]
    python3 -m dsv3_client logs JOB [-f] [--rank R] [--tail N]
    python3 -m dsv3_client cancel JOB [--reason TEXT] [--wait]
    python3 -m dsv3_client metrics JOB [--name loss ...]

Every verb takes --controller, --token, --tls-ca and --output text|json. Exit codes as
dsv3ctl's: 0 ok, 1 a failed request or job, 2 usage, 3 the controller cannot be reached.
"""
import argparse
import json
import sys

from . import Client, Dsv3Error


def _print_jobs(jobs):
    print("%-5s %-24s %-12s %-12s" % ("ID", "NAME", "STATE", "STEP"))
    for j in jobs:
        print("%-5s %-24s %-12s %-12s" % (j.get("id"), j.get("name", "")[:24], j.get("state", "").replace("JOB_STATE_", ""),
                                          "%s/%s" % (j.get("step", 0), j.get("total_steps", 0))))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="dsv3-py", description="dsv3 jobs from Python")
    ap.add_argument("--controller")
    ap.add_argument("--token")
    ap.add_argument("--tls-ca")
    ap.add_argument("--output", choices=("text", "json"), default="text")
    verbs = ap.add_subparsers(dest="verb", required=True)
    s = verbs.add_parser("submit", help="submit a config")
    s.add_argument("config")
    s.add_argument("--ranks", type=int, default=1)
    s.add_argument("--name", default="")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--resume", default="")
    s.add_argument("--follow", action="store_true", help="stream the logs until the job ends; exit with its outcome")
    st = verbs.add_parser("status", help="the newest jobs, or one job")
    st.add_argument("job", type=int, nargs="?")
    lg = verbs.add_parser("logs", help="a job's logs")
    lg.add_argument("job", type=int)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("--rank", type=int)
    lg.add_argument("--tail", type=int, default=0)
    c = verbs.add_parser("cancel", help="cancel a job")
    c.add_argument("job", type=int)
    c.add_argument("--reason", default="")
    c.add_argument("--wait", action="store_true")
    m = verbs.add_parser("metrics", help="a job's metric series")
    m.add_argument("job", type=int)
    m.add_argument("--name", action="append", default=[])
    args = ap.parse_args(argv)
    as_json = args.output == "json"
    try:
        with Client(args.controller, args.token, args.tls_ca) as client:
            if args.verb == "submit":
                job = client.submit(args.config, name=args.name, num_ranks=args.ranks, priority=args.priority,
                                    resume_from=args.resume)
                print(json.dumps(job, indent=2) if as_json else "submitted job %s (%s)" % (job["id"], job.get("name")))
                if args.follow:
                    for line in client.logs(int(job["id"]), follow=True):
                        print(line, flush=True)
                    job = client.wait(int(job["id"]))
                    print("job %s %s" % (job["id"], job["state"].replace("JOB_STATE_", "")))
                    return 0 if job["state"] == "JOB_STATE_COMPLETED" else 1
            elif args.verb == "status":
                result = client.status(args.job)
                if as_json:
                    print(json.dumps(result, indent=2))
                else:
                    _print_jobs([result] if args.job is not None else result)
            elif args.verb == "logs":
                for line in client.logs(args.job, follow=args.follow, rank=args.rank, tail=args.tail):
                    print(line, flush=True)
            elif args.verb == "cancel":
                job = client.cancel(args.job, reason=args.reason, wait=args.wait)
                print(json.dumps(job, indent=2) if as_json else "job %s %s" % (job["id"], job["state"].replace("JOB_STATE_", "")))
            elif args.verb == "metrics":
                series = client.metrics(args.job, args.name)
                if as_json:
                    print(json.dumps({k: [list(p) for p in v] for k, v in series.items()}, indent=2))
                else:
                    for name, points in series.items():
                        print("%-24s %d points, last %g at step %d" % (name, len(points), points[-1][1], points[-1][0]))
    except Dsv3Error as e:
        for f in e.errors:
            print("%s: %s" % (f.get("path", ""), f.get("message", "")), file=sys.stderr)
        print("dsv3-py: %s" % e, file=sys.stderr)
        return 3 if e.code == "UNAVAILABLE" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
