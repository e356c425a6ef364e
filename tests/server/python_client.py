"""The Python client package (clients/python, assembled by the build) against a real dsv3d.

Connects with what `dsv3ctl login` saved (XDG_CONFIG_HOME is set by the test), submits a job,
lists and waits for it, reads its logs and metrics, has a broken config refused with its field
errors, cancels a second job, runs the package's command line, checks that a wrong token is
refused, and asks the server-reflection service which services it offers. Prints one JSON
report.
"""
import argparse
import json
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", required=True, help="the assembled client: build/clients/python")
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.gen)
    import grpc
    from dsv3_client import Client, Dsv3Error, load_config

    report = {}
    with Client() as c:  # the controller and token from dsv3ctl's login file
        report["controller_from_login"] = c.controller
        job = c.submit(args.config, name="from-python")
        job_id = int(job["id"])
        report["submitted"] = job_id
        report["listed"] = [int(j["id"]) for j in c.status() if j.get("name") == "from-python"]
        report["final_state"] = c.wait(job_id, timeout=120, poll=0.2)["state"]
        report["log_tail"] = list(c.logs(job_id, tail=1))
        loss = c.metrics(job_id, ["loss"]).get("loss", [])
        report["loss_last_step"] = loss[-1][0] if loss else None

        broken = load_config(args.config)
        broken["training"]["learning_rate"] = -1
        try:
            c.submit(broken)
            report["refused"] = None
        except Dsv3Error as e:
            report["refused"] = {"code": e.code, "paths": [f["path"] for f in e.errors]}

        long_run = load_config(args.config)
        long_run["training"]["train_steps"] = 100000
        second = int(c.submit(long_run, name="to-cancel")["id"])
        report["canceled_state"] = c.cancel(second, reason="from python", wait=True, timeout=120)["state"]

        # Server reflection by hand (Debian's python3-grpcio has no reflection package):
        # ServerReflectionRequest{list_services: "*"} is field 7, a string.
        reflect = c._channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        services = b"".join(reflect(iter([b"\x3a\x01*"]), metadata=c._metadata()))
        report["reflection_lists_controller"] = b"dsv3.v1.Controller" in services

    try:
        Client(token="dsv3u_wrong").status()
        report["wrong_token"] = None
    except Dsv3Error as e:
        report["wrong_token"] = e.code

    cli = subprocess.run([sys.executable, "-m", "dsv3_client", "--output", "json", "status", str(job_id)],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=args.gen))
    report["cli_exit"] = cli.returncode
    report["cli_state"] = json.loads(cli.stdout)["state"] if cli.returncode == 0 else cli.stderr
    print(json.dumps(report))


if __name__ == "__main__":
    main()
