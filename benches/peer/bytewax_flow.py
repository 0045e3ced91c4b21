"""The Bytewax peer of weir's `dataflow-throughput` bench: the same messages through the same
map and filter logic (the `temperature` module's, in Python), in process, one worker.

Source: `TestingSource` (batches of 64, as weir's sources take) over a list of N messages built before the clock starts (topic
`probe/1`, payload `{"temperature":{"value":50,"unit":"C"}}`, one user property, an HLC-like
timestamp). Map: parse the JSON payload, convert Fahrenheit to Celsius (re-serialising the
payload), count the request in a labelled counter, rewrite `test_property_key`. Filter: parse
the payload again and keep Celsius temperatures strictly between -40 and 3422. Sink: a
counting sink. Timed: `run_main(flow)` from start to end, wall clock and process CPU time.

Prints one line: `bytewax <messages> <wall seconds> <CPU seconds of the process>`.
"""

import json
import sys
import time

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

PAYLOAD = b'{"temperature":{"value":50,"unit":"C"}}'
LOWER, UPPER = -40.0, 3422.0

# The module's metrics: counter `requests`, labelled by module and unit.
COUNTERS = {}


def count_request(unit=None):
    labels = (("module", "module-temperature/map"),)
    if unit is not None:
        labels += (("unit", unit),)
    key = ("requests", labels)
    COUNTERS[key] = COUNTERS.get(key, 0) + 1


def fahrenheit_to_celsius(message):
    count_request()
    measurement = json.loads(message["payload"])
    temperature = measurement.get("temperature")
    if temperature is not None:
        if temperature["unit"] == "F":
            count_request("Fahrenheit")
            temperature["value"] = (temperature["value"] - 32.0) * 5.0 / 9.0
            temperature["unit"] = "C"
            message["payload"] = json.dumps(measurement, separators=(",", ":")).encode()
        else:
            count_request("Celsius")
    message["user_properties"] = [
        (k, b"new_value" if k == b"test_property_key" else v)
        for (k, v) in message["user_properties"]
    ]
    return message


def filter_temperature(message):
    temperature = json.loads(message["payload"]).get("temperature")
    if temperature is None or temperature["unit"] != "C":
        return False
    value = temperature.get("value")
    return value is not None and LOWER < value < UPPER


class _Count(StatelessSinkPartition):
    def __init__(self, total):
        self.total = total

    def write_batch(self, items):
        self.total[0] += len(items)


class CountingSink(DynamicSink):
    def __init__(self):
        self.total = [0]

    def build(self, step_id, worker_index, worker_count):
        return _Count(self.total)


def main():
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    base = 1_700_000_000_000
    items = [
        {
            "timestamp": (base + i // 100, 0, "bench"),
            "topic": b"probe/1",
            "payload": PAYLOAD,
            "user_properties": [(b"test_property_key", b"v")],
        }
        for i in range(messages)
    ]
    sink = CountingSink()
    flow = Dataflow("temperature")
    stream = op.input("source", flow, TestingSource(items, batch_size=64))
    stream = op.map("map", stream, fahrenheit_to_celsius)
    stream = op.filter("filter", stream, filter_temperature)
    op.output("sink", stream, sink)
    started, cpu_started = time.perf_counter(), time.process_time()
    run_main(flow)
    took, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if sink.total[0] != messages:
        sys.exit(f"bytewax: {sink.total[0]} of {messages} messages reached the sink")
    print(f"bytewax {messages} {took:.6f} {cpu:.6f}")


if __name__ == "__main__":
    main()
