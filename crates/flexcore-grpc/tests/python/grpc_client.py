"""A FlexCore gRPC client in Python, run by tests/python_client.rs against a live server.

Usage: python3 grpc_client.py HOST:PORT STUBS_DIR

STUBS_DIR holds the modules that `python3 -m grpc_tools.protoc` generated from the repository's
proto/flexcore/v1/*.proto. The script exits non-zero (with a traceback) on the first surprise.
"""

import json
import sys
import uuid


def main(address, stubs_dir):
    sys.path.insert(0, stubs_dir)
    import grpc
    from google.protobuf import empty_pb2
    from flexcore.v1 import command_pb2, command_pb2_grpc
    from flexcore.v1 import event_store_pb2, event_store_pb2_grpc
    from flexcore.v1 import query_pb2, query_pb2_grpc

    print(f"python {sys.version.split()[0]} at {sys.executable}, grpcio {grpc.__version__}")
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        commands = command_pb2_grpc.CommandServiceStub(channel)
        queries = query_pb2_grpc.QueryServiceStub(channel)
        events = event_store_pb2_grpc.EventStoreStub(channel)

        # A command, with trace context and a correlation id in the request metadata.
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        outcome = commands.Send(
            command_pb2.SendCommandRequest(
                command_type="create_user",
                payload_json=json.dumps({"email": "py@example.com", "profile": {"lang": "python"}}),
            ),
            metadata=[("traceparent", traceparent), ("x-correlation-id", "py-corr-1")],
            timeout=10,
        )
        assert outcome.stream_id.startswith("user-"), outcome
        assert outcome.HasField("version") and outcome.version == 0, outcome
        assert [e.event_type for e in outcome.events] == ["user.created"], outcome
        user_id = outcome.stream_id[len("user-"):]

        answer = queries.Ask(
            # Read-your-writes: wait until the read model has applied the command's event.
            query_pb2.AskRequest(query_type="get_user", params_json=json.dumps(
                {"user_id": user_id, "min_position": outcome.events[0].global_position})),
            timeout=10,
        )
        assert json.loads(answer.result_json)["email"] == "py@example.com", answer

        code, _ = expect_error(grpc, lambda: commands.Send(
            command_pb2.SendCommandRequest(command_type="create_user", payload_json='{"email": "PY@example.com"}'),
            timeout=10,
        ))
        assert code == grpc.StatusCode.ABORTED, code
        code, _ = expect_error(grpc, lambda: commands.Send(
            command_pb2.SendCommandRequest(command_type="create_user", payload_json='{"email": "nope"}'),
            timeout=10,
        ))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, code

        # A raw append with an expectation, then a stale one.
        stream_id = f"pyorder-{uuid.uuid4()}"
        appended = events.Append(
            event_store_pb2.AppendRequest(
                stream_id=stream_id,
                no_stream=empty_pb2.Empty(),
                events=[
                    event_store_pb2.NewEvent(event_type="pyorder.placed", data_json=json.dumps({"total": 42})),
                    event_store_pb2.NewEvent(
                        event_id=str(uuid.uuid4()),
                        event_type="pyorder.paid",
                        data_json="{}",
                        metadata_json=json.dumps({"actor": "py"}),
                    ),
                ],
            ),
            timeout=10,
        )
        assert appended.next_version == 1, appended
        assert appended.last_position == appended.first_position + 1, appended
        code, trailers = expect_error(grpc, lambda: events.Append(
            event_store_pb2.AppendRequest(
                stream_id=stream_id,
                exact=0,
                events=[event_store_pb2.NewEvent(event_type="pyorder.placed", data_json="{}")],
            ),
            timeout=10,
        ))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, code
        assert trailers.get("x-current-version") == "1", trailers

        # The global log, page by page.
        seen, position = [], 0
        while True:
            page = events.ReadAll(event_store_pb2.ReadAllRequest(from_position=position, limit=2), timeout=10)
            if not page.events:
                break
            seen.extend(page.events)
            position = page.next_position
        types = [e.event_type for e in seen]
        assert types.count("user.created") == 1 and "pyorder.paid" in types, types
        created = next(e for e in seen if e.event_type == "user.created")
        metadata = json.loads(created.metadata_json)
        assert metadata["traceparent"] == traceparent, metadata
        assert metadata["correlation_id"] == "py-corr-1", metadata
        assert metadata["causation_id"] == outcome.command_id, metadata

        # A short live subscription: the history of the category, then an event appended while
        # subscribed, then cancel.
        subscription = events.SubscribeAll(
            event_store_pb2.SubscribeAllRequest(from_position=0, category="pyorder"),
            timeout=20,
        )
        history = [next(subscription), next(subscription)]
        assert [e.event_type for e in history] == ["pyorder.placed", "pyorder.paid"], history
        events.Append(
            event_store_pb2.AppendRequest(
                stream_id=stream_id,
                exact=1,
                events=[event_store_pb2.NewEvent(event_type="pyorder.shipped", data_json="{}")],
            ),
            timeout=10,
        )
        live = next(subscription)
        assert live.event_type == "pyorder.shipped" and live.stream_version == 2, live
        assert live.global_position > history[-1].global_position, live
        subscription.cancel()

    print(f"python grpc client: ok ({len(seen)} events read, {len(history) + 1} from the subscription)")


def expect_error(grpc, call):
    """Runs a call that must fail; returns its status code and trailing metadata as a dict."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), dict(error.trailing_metadata() or ())
    raise AssertionError("the call succeeded but should have failed")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
