"""A dsv3 client in Python, from stubs that protoc generated from proto/dsv3/v1/*.proto.

Submits a job, lists jobs, waits for the job to end, validates a broken config, and asks
the server-reflection service which services it offers. Prints one JSON report.
"""
import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", required=True, help="folder with the generated dsv3/v1/*_pb2*.py")
    ap.add_argument("--controller", required=True)
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.gen)
    import grpc
    from dsv3.v1 import controller_pb2 as pb
    from dsv3.v1 import controller_pb2_grpc as rpc

    channel = grpc.insecure_channel(args.controller)
    stub = rpc.ControllerStub(channel)
    with open(args.config) as f:
        config = f.read()
    job = stub.SubmitJob(pb.SubmitJobRequest(config_json=config, name="from-python", num_ranks=1)).job
    listed = [j.id for j in stub.ListJobs(pb.ListJobsRequest()).jobs if j.name == "from-python"]
    deadline = time.time() + 120
    while True:
        state = stub.GetJob(pb.GetJobRequest(job_id=job.id)).state
        if state in (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELED) or time.time() > deadline:
            break
        time.sleep(0.2)

    broken = json.loads(config)
    broken["training"]["learning_rate"] = -1
    check = stub.ValidateConfig(pb.ValidateConfigRequest(config_json=json.dumps(broken), num_ranks=1))

    # grpc.reflection.v1alpha by hand (no reflection package in Debian's python3-grpcio):
    # ServerReflectionRequest{list_services: "*"} is field 7, a string.
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    answers = list(reflect(iter([b"\x3a\x01*"])))
    services = b"".join(answers)

    print(json.dumps({
        "submitted": job.id,
        "listed": listed,
        "final_state": pb.JobState.Name(state),
        "invalid_errors": [e.path for e in check.errors],
        "reflection_lists_controller": b"dsv3.v1.Controller" in services and b"dsv3.v1.WorkerReports" in services,
    }))


if __name__ == "__main__":
    main()
