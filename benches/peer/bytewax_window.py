"""The Bytewax peer of weir's row 4 (`window-peers`): MQTT in → °F→°C map → filter → 10 s
tumbling window average → MQTT out, one worker, as a Bytewax user would write it.

Source: a paho-mqtt 2 (MQTT v5) client subscribed at QoS 0 on its network thread, handing
payloads to the dataflow through a queue (`next_batch` takes what is there, up to 1024, waiting
at most 5 ms for the first). Map: parse the JSON payload, convert °F to °C, re-serialise (the
`temperature` module's map). Filter: parse again, keep °C strictly between -40 and 3422 (its
filter). Window: one key, `fold_window` on a `SystemClock` with a 10 s `TumblingWindower`
aligned to the epoch (count, sum, min, max, last), emitting at the window's close. Sink: a
paho-mqtt client publishing `{"temperature":{"count":…,"max":…,"min":…,"average":…,"last":…,
"unit":"C"}}` at QoS 0.

Usage: bytewax_window.py HOST PORT IN_TOPIC OUT_TOPIC. Prints `ready` once subscribed.
"""

import json
import queue
import sys
import threading
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.operators import windowing as win
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

HOST, PORT, IN_TOPIC, OUT_TOPIC = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
LOWER, UPPER = -40.0, 3422.0


def client(name):
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5
    )


class _MqttIn(StatelessSourcePartition):
    def __init__(self):
        self.queue = queue.SimpleQueue()
        subscribed = threading.Event()
        self.client = client("bytewax-window-in")

        def on_connect(c, _userdata, _flags, _reason, _properties):
            c.subscribe(IN_TOPIC, qos=0)

        def on_subscribe(_c, _userdata, _mid, _reasons, _properties):
            subscribed.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = lambda _c, _u, message: self.queue.put(message.payload)
        self.client.connect(HOST, PORT)
        self.client.loop_start()
        if not subscribed.wait(10):
            sys.exit("bytewax: not subscribed within 10 s")
        print("ready", flush=True)

    def next_batch(self):
        batch = []
        try:
            batch.append(self.queue.get(timeout=0.005))
            while len(batch) < 1024:
                batch.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        return batch

    def close(self):
        self.client.loop_stop()


class MqttIn(DynamicSource):
    def build(self, step_id, worker_index, worker_count):
        return _MqttIn()


class _MqttOut(StatelessSinkPartition):
    def __init__(self):
        self.client = client("bytewax-window-out")
        self.client.connect(HOST, PORT)
        self.client.loop_start()

    def write_batch(self, items):
        for payload in items:
            self.client.publish(OUT_TOPIC, payload, qos=0)

    def close(self):
        self.client.loop_stop()


class MqttOut(DynamicSink):
    def build(self, step_id, worker_index, worker_count):
        return _MqttOut()


def fahrenheit_to_celsius(payload):
    measurement = json.loads(payload)
    temperature = measurement.get("temperature")
    if temperature is not None and temperature.get("unit") == "F":
        temperature["value"] = (temperature["value"] - 32.0) * 5.0 / 9.0
        temperature["unit"] = "C"
        payload = json.dumps({"temperature": temperature}, separators=(",", ":")).encode()
    return payload


def in_range(payload):
    temperature = json.loads(payload).get("temperature")
    if temperature is None or temperature.get("unit") != "C":
        return False
    value = temperature.get("value")
    return value is not None and LOWER < value < UPPER


def builder():
    return [0, 0.0, float("inf"), float("-inf"), 0.0]


def folder(stats, payload):
    value = json.loads(payload)["temperature"]["value"]
    stats[0] += 1
    stats[1] += value
    stats[2] = min(stats[2], value)
    stats[3] = max(stats[3], value)
    stats[4] = value
    return stats


def merger(a, b):
    return [a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3]), b[4]]


def render(key_window_stats):
    _key, (_window, (count, total, low, high, last)) = key_window_stats
    return json.dumps(
        {
            "temperature": {
                "count": count,
                "max": high,
                "min": low,
                "average": total / count if count else 0.0,
                "last": last,
                "unit": "C",
            }
        },
        separators=(",", ":"),
    ).encode()


flow = Dataflow("window")
stream = op.input("mqtt-in", flow, MqttIn())
stream = op.map("map", stream, fahrenheit_to_celsius)
stream = op.filter("filter", stream, in_range)
keyed = op.key_on("one-key", stream, lambda _payload: "all")
windowed = win.fold_window(
    "average",
    keyed,
    win.SystemClock(),
    win.TumblingWindower(
        length=timedelta(seconds=10),
        align_to=datetime(2024, 1, 1, tzinfo=timezone.utc),
    ),
    builder,
    folder,
    merger,
)
op.output("mqtt-out", op.map("render", windowed.down, render), MqttOut())
run_main(flow)
