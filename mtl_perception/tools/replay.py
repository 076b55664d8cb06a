"""``mtl-perception-replay BAG --topic T [--rate R] [--loop]``: republish a bag with its timing.

Works without a ROS install (rosbags reads rosbag2 sqlite3/mcap and ROS 1 bags; rclpy publishes
the CDR bytes as they are, so there is no per-message conversion). Header stamps are kept unless
``--restamp`` sets them to the publish time (needed to measure latency against the wall clock).
Looping makes stamps go backwards, which the node treats as a new stream. ``--ros-args`` work as
usual, e.g. ``-r /camera/image_raw:=/cam1/image_raw``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any

from .bagio import BagError, read_bag, to_cdr


def message_class(msgtype: str) -> Any:
    """``sensor_msgs/msg/Image`` -> the rclpy class (any installed interface package)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message, serialize_message
    from rclpy.utilities import remove_ros_args

    argv = list(sys.argv if argv is None else ["mtl-perception-replay", *argv])
    ap = argparse.ArgumentParser(prog="mtl-perception-replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("bag")
    ap.add_argument("--topic", required=True, help="topic in the bag to replay")
    ap.add_argument("--out-topic", default=None, help="publish on this topic (default: the bag's)")
    ap.add_argument("--rate", type=float, default=1.0, help="speed factor (2 = twice as fast)")
    ap.add_argument("--loop", action="store_true")
    ap.add_argument("--restamp", action="store_true", help="set header.stamp to the publish time")
    ap.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--wait-subscriber", type=float, default=5.0, metavar="S",
                    help="wait up to S seconds for a subscriber before starting (0: don't)")
    ap.add_argument("--max-messages", type=int, default=None)
    a = ap.parse_args(remove_ros_args(argv)[1:])
    if a.rate <= 0:
        ap.error("--rate must be > 0")

    prog = "mtl-perception-replay"

    def warn(message: str) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    try:
        first = next(read_bag(a.bag, a.topic, warn=warn))
        cls = message_class(first.msgtype)
    except StopIteration:
        print(f"{prog}: bag {a.bag!r}: topic {a.topic!r} has no messages", file=sys.stderr)
        return 1
    except (ImportError, AttributeError) as e:  # a message type no installed package defines
        print(f"{prog}: bag {a.bag!r}: topic {a.topic!r}: cannot publish its type ({e})", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:  # BagError: cannot be opened, no such topic
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    rclpy.init(args=argv)
    node = rclpy.create_node("mtl_perception_replay")
    rel = ReliabilityPolicy.RELIABLE if a.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    pub = node.create_publisher(cls, a.out_topic or a.topic,
                                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=a.depth, reliability=rel))
    log = node.get_logger()
    sent, status = 0, 0
    try:
        deadline = time.monotonic() + a.wait_subscriber
        while rclpy.ok() and pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info(f"replaying {a.bag} {a.topic} -> {pub.topic_name} at x{a.rate}"
                 f" ({pub.get_subscription_count()} subscribers)")
        while rclpy.ok():
            t_bag0 = None
            t_wall0 = time.monotonic()
            for m in read_bag(a.bag, a.topic, warn=lambda _: None):  # warned once above
                if not rclpy.ok() or (a.max_messages is not None and sent >= a.max_messages):
                    break
                t_bag0 = m.timestamp_ns if t_bag0 is None else t_bag0
                due = t_wall0 + (m.timestamp_ns - t_bag0) * 1e-9 / a.rate
                while rclpy.ok() and (left := due - time.monotonic()) > 0:
                    time.sleep(min(left, 0.05))
                data = to_cdr(m)
                if a.restamp and hasattr(cls, "header"):
                    msg = deserialize_message(data, cls)
                    msg.header.stamp = node.get_clock().now().to_msg()
                    data = serialize_message(msg)
                try:
                    pub.publish(data)
                except Exception:  # noqa: BLE001 - RCLError when a signal shut the context down mid-loop
                    if rclpy.ok():
                        raise
                    break
                sent += 1
            if not a.loop or (a.max_messages is not None and sent >= a.max_messages):
                break
        # give reliable subscribers a moment to take the last message before the writer goes
        time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except BagError as e:  # damaged mid-stream: what came before it was published
        print(f"{prog}: {e}", file=sys.stderr)
        status = 1
    finally:
        print(f"replayed {sent} messages", file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
