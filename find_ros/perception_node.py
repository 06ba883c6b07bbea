"""find_perception: camera frames + (interleaved) instructions in; masks, embeddings, results out.

A thin adapter from topics to :class:`find_core.pipeline.FindPipeline` (see docs/ros_interface.md):

* Never a backlog: every camera subscription has depth 1 and the callback only parks the message in
  a one-slot mailbox; a worker thread always takes the *newest* frame. A frame replaced before the
  worker got to it counts as ``frames_dropped``; a gap in a publisher's sequence numbers (a frame DDS
  never delivered) as ``frames_missed``.
* Each processed frame is encoded once (``FindPipeline.encode``): its ranking part for the ring
  buffer (``FindPipeline.gallery``), its masks and its per-pixel embeddings all come from that one
  vision pass. An instruction ranks the buffer with one instruction encoding and encodes only the
  best frame again to ground it (``localize`` with ``gallery``).
* Bad input of any kind becomes an ``error`` result on ``~/results`` and a log line; the node keeps
  serving.
* 3D positions come only from the depth under an entity's own mask (its interior, see
  :func:`entity_points`), and only when enough of it is valid; otherwise the entity says why
  (``position_reason``).
* SIGINT / SIGTERM stop it cleanly in any state (:mod:`find_ros.node_runner`): the worker finishes
  the frame in hand and its publishers close before the context goes.

Run: ``python -m find_ros.perception_node --ros-args --params-file config/find_perception.yaml``.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import numpy as np
from rclpy.expand_topic_name import expand_topic_name
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from find_core.instructions import Instruction, InstructionError, parse_instruction
from find_core.messages import stamp_seconds
from find_core.pipeline import EncodedImage

from .depth_pairing import DepthPairing
from .embedding_transport import EmbeddingTransport
from .entity_geometry import grounding_regions, place_entity, region_stats, resize_max_side
from .frame_buffer import BufferedFrame, DepthFrame, FrameBuffer
from .image_conversion import ImageConversionError, compressed_to_rgb, image_to_rgb, labels_to_image, rgb_to_image
from .node_runner import NodeWorker, PublishGate, run_node
from .node_stats import SequenceGaps, Stopwatch, recent_rate
from .params import ParameterError, PerceptionParams, declare_params
from .qos import IMAGE_DEPTH, REFRESH_PERIOD, CameraSubscription, gid_key, image_output_qos, instruction_qos, results_qos
from .results_schema import (POSITION_REASONS, EmbeddingInfo, EntityInfo, FrameInfo, LocalizationInfo, Result,
                             error_result)
from .references import ReferenceProblem, is_clear, resolve_frame_references
from .startup import StartupError, load_model
from .visuals import entity_markers, overlay_image

# --------------------------------------------------------------------------- the node


class FindPerceptionNode(Node):
    """See the module docstring and docs/ros_interface.md."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("find_perception", **kwargs)
        try:
            self.params = declare_params(self, PerceptionParams)
        except ParameterError as err:
            raise StartupError(str(err)) from None
        p = self.params
        self._log = self.get_logger()
        started = time.perf_counter()
        self._log.info(f"loading model {p.model_preset!r} checkpoint={p.checkpoint or '-'} on {p.device}")
        self.pipeline = load_model(p, self._log.warning, p.input_size or None)
        self._embedding_dims = self._warm_up()
        e = p.embeddings
        try:
            self._transport = EmbeddingTransport.from_params(self._embedding_dims, e.dtype, e.dims, e.projection_seed,
                                                             e.subsample)
        except ValueError as err:
            raise StartupError(str(err)) from None
        self._log.info(f"model {p.model_preset!r} checkpoint={p.checkpoint or '-'} on {self.pipeline.device} "
                       f"({p.precision}, input {self.pipeline.input_size} px) ready in "
                       f"{time.perf_counter() - started:.1f} s; embedding width {self._embedding_dims}")

        self._buffer = FrameBuffer(p.buffer_size)
        self._cond = threading.Condition()
        self._pending_frame: tuple[Any, str, float] | None = None
        self._instructions: deque[tuple[str, float]] = deque()
        self._standing: Instruction | None = None
        self._depth = DepthPairing(p.depth.sync_tolerance, p.max_image_pixels,
                                   lambda message: self._publish_error("bad_depth", message))
        self._gaps = SequenceGaps(gid_key)
        self._counts = dict(frames_received=0, frames_processed=0, frames_dropped=0, frames_missed=0, errors=0)
        self._processed_times: deque[float] = deque(maxlen=120)
        self._latencies: deque[float] = deque(maxlen=60)
        self._last_processed_stamp: float | None = None
        self._worker = NodeWorker("find_perception_worker", self._work, self._cond, self._log)

        self._gate = PublishGate()               # closed by shutdown(): nothing is published after that
        out = image_output_qos()
        publisher = lambda kind, name, qos: self._gate.wrap(self.create_publisher(kind, name, qos))  # noqa: E731
        self._pub_masks = publisher(Image, "~/masks", out)
        self._pub_embeddings = publisher(Image, "~/embeddings", out)
        self._pub_overlay = publisher(Image, "~/overlay", out)
        self._pub_localized = publisher(Image, "~/localized_frame", out)
        self._pub_entities = publisher(MarkerArray, "~/entities", out)
        self._pub_results = publisher(String, "~/results", results_qos())
        self._pub_status = publisher(String, "~/status", results_qos())

        if p.image_transport == "compressed":
            image_type, image_topic = CompressedImage, self._resolve("image") + "/compressed"
        else:
            image_type, image_topic = Image, "image"
        self._inputs = {"image": CameraSubscription(self, image_type, image_topic, self._on_image, IMAGE_DEPTH,
                                                    p.camera_reliability)}
        if p.depth.enabled:
            self._inputs["depth"] = CameraSubscription(self, Image, "depth", self._on_depth, 1, p.camera_reliability)
            self._inputs["camera_info"] = CameraSubscription(self, CameraInfo, "camera_info", self._on_camera_info,
                                                             1, p.camera_reliability)
        self.create_timer(REFRESH_PERIOD, self._refresh_inputs)
        self.create_subscription(String, "instruction", self._on_instruction, instruction_qos())
        if p.stats_period > 0:
            self.create_timer(p.stats_period, self._report)
        self._worker.start()
        self._log.info(f"listening on {self._inputs['image'].topic_name} ({p.image_transport}, "
                       f"camera_reliability {p.camera_reliability}), mode={p.mode}, standing={p.standing}, "
                       f"buffer_size={p.buffer_size}")

    # ---- start-up ------------------------------------------------------------------------------
    def _resolve(self, name: str) -> str:
        """The remapped, fully qualified topic name (plain expansion where rclpy cannot remap-resolve)."""
        if hasattr(self, "resolve_topic_name"):
            return self.resolve_topic_name(name)
        return expand_topic_name(name, self.get_name(), self.get_namespace())

    def _warm_up(self) -> int:
        """One pass through every stage on a dummy frame, so the first real frame is not slow."""
        dummy = np.full((64, 64, 3), 127, np.uint8)
        try:
            width = int(self.pipeline.embed_images([dummy]).shape[1])
            self.pipeline.embed_pixels(dummy)
            self.pipeline.interleave_ground(dummy, "warm up")
            if self.params.mode == "segment":
                self.pipeline.segment(dummy, self.params.classes, self.params.segment_mode,
                                      self.params.object_threshold)
        except Exception as err:
            raise StartupError(f"the model fails on a dummy frame: {type(err).__name__}: {err}") from None
        return width

    def shutdown(self) -> None:
        """The worker finishes the frame or instruction in hand, then the publishers close."""
        self._worker.shutdown(self._gate)

    def activity(self) -> str:
        return self._worker.activity()

    def _refresh_inputs(self) -> None:
        for subscription in self._inputs.values():
            subscription.refresh()

    # ---- callbacks (executor thread): park the message, never compute ---------------------------
    def _on_image(self, msg: Any, info: Any) -> None:
        missed = self._gaps.missed(info, self._inputs["image"].initial_publishers) if info is not None else 0
        kind = "raw" if isinstance(msg, Image) else "compressed"
        with self._cond:
            self._counts["frames_missed"] += missed
            self._counts["frames_received"] += 1
            if self._pending_frame is not None:
                self._counts["frames_dropped"] += 1
            self._pending_frame = (msg, kind, time.perf_counter())
            self._cond.notify()

    def _on_depth(self, msg: Image, _info: Any = None) -> None:
        self._depth.add_depth(msg)

    def _on_camera_info(self, msg: CameraInfo, _info: Any = None) -> None:
        self._depth.set_camera_info(msg)

    def _on_instruction(self, msg: String) -> None:
        with self._cond:
            if len(self._instructions) >= 32:
                self._instructions.popleft()
                self._log.warning("more than 32 instructions waiting; the oldest was dropped")
            self._instructions.append((msg.data, time.perf_counter()))
            self._cond.notify()

    # ---- worker thread ----------------------------------------------------------------------------
    def _work(self) -> None:
        stop = self._worker.stop
        while not stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: stop.is_set() or self._pending_frame is not None
                                    or bool(self._instructions), timeout=0.5)
                frame, self._pending_frame = self._pending_frame, None
                instruction = self._instructions.popleft() if self._instructions else None
            # the frame first: it arrived before the instruction was taken, so localization sees it
            jobs = [(self._process_frame, frame, "a frame")] if frame is not None else []
            jobs += [(self._process_instruction, instruction, "an instruction")] if instruction is not None else []
            self._worker.run_jobs(jobs, lambda err: self._publish_error("internal_error",
                                                                        f"{type(err).__name__}: {err}"))

    def _stats(self) -> dict[str, float]:
        return self._stats_and_stamp()[0]

    def _stats_and_stamp(self) -> tuple[dict[str, float], float | None]:
        with self._cond:
            stats: dict[str, float] = dict(self._counts)
            last_stamp = self._last_processed_stamp
        stats["fps"] = recent_rate(list(self._processed_times), time.perf_counter())
        stats["buffered"] = len(self._buffer)
        return stats, last_stamp

    def _publish_error(self, code: str, message: str, field: str | None = None, frame: FrameInfo | None = None,
                       instruction: Instruction | None = None) -> None:
        with self._cond:
            self._counts["errors"] += 1
        where = f" ({field})" if field else ""
        self._log.warning(f"{code}{where}: {message}", throttle_duration_sec=1.0)
        result = error_result(self.get_fully_qualified_name(), code, message, field,
                              instruction_id=instruction.id if instruction else None,
                              instruction_text=instruction.text if instruction else None,
                              frame=frame, stats=self._stats())
        self._pub_results.publish(String(data=result.to_json()))

    @staticmethod
    def _frame_info(frame: BufferedFrame) -> FrameInfo:
        return FrameInfo(frame.stamp, frame.sec, frame.nanosec, frame.frame_id, frame.size[1], frame.size[0],
                         frame.source_size[1], frame.source_size[0])

    def _process_frame(self, msg: Any, kind: str, received: float) -> None:
        watch = Stopwatch()
        p = self.params
        stamp = msg.header.stamp
        seconds = stamp_seconds(stamp)
        try:
            rgb = image_to_rgb(msg, p.max_image_pixels) if kind == "raw" else compressed_to_rgb(msg, p.max_image_pixels)
        except ImageConversionError as err:
            height, width = (int(msg.height), int(msg.width)) if kind == "raw" else (0, 0)
            info = FrameInfo(seconds, stamp.sec, stamp.nanosec, msg.header.frame_id, width, height, width, height)
            self._publish_error("bad_image", str(err), frame=info)
            return
        source_size = rgb.shape[:2]
        rgb = resize_max_side(rgb, p.processing_max_side)
        watch.mark("decode")
        try:
            encoded = self.pipeline.encode(rgb)   # one vision pass serves every output of this frame
            gallery = self.pipeline.gallery([encoded])   # what ranking reads of it, kept in the buffer
        except Exception as err:
            self._model_error(err)
            return
        watch.mark("embed_image")
        frame = BufferedFrame(seconds, stamp.sec, stamp.nanosec, msg.header.frame_id, rgb, gallery.images[0],
                              (int(source_size[0]), int(source_size[1])), self._pair_depth(seconds, msg.header.frame_id)[0],
                              None if gallery.objects is None else gallery.objects[0])
        watch.mark("depth")
        if self._buffer.push(frame):
            self._log.warning(f"frame stamp {seconds:.3f} is older than the newest buffered frame: time jumped "
                              "back (looping bag?), the frame buffer was cleared")
        with self._cond:  # counts and the stamp change together, so ~/status never shows one without the other
            self._counts["frames_processed"] += 1
            self._last_processed_stamp = seconds
        self._processed_times.append(time.perf_counter())

        if p.mode == "segment":
            self._segment(frame, encoded, watch, received)
        elif p.standing and self._standing is not None:
            self._ground_standing(frame, encoded, watch, received)
        elif p.embeddings.enabled and p.embeddings.every_frame:
            self._publish_embeddings(frame, encoded)

    def _model_error(self, err: Exception, instruction: Instruction | None = None,
                     frame: FrameInfo | None = None) -> None:
        self._log.error(f"model error: {err}\n{traceback.format_exc()}", throttle_duration_sec=1.0)
        self._publish_error("model_error", f"{type(err).__name__}: {err}", frame=frame, instruction=instruction)

    def _segment(self, frame: BufferedFrame, encoded: EncodedImage, watch: Stopwatch, received: float) -> None:
        p = self.params
        try:
            result = self.pipeline.segment(encoded, p.classes, p.segment_mode, p.object_threshold)
        except Exception as err:
            self._model_error(err, frame=self._frame_info(frame))
            return
        watch.mark("segment")
        labels = result.label_map.astype(np.uint16)
        regions = [(s.segment_id, i, s.label, "class", s.score, s.class_index) for i, s in enumerate(result.segments)]
        self._publish_outputs("segmentation", frame, labels, regions, watch, received, encoded=encoded)

    def _ground_standing(self, frame: BufferedFrame, encoded: EncodedImage, watch: Stopwatch, received: float) -> None:
        instruction = self._standing
        try:
            grounding = self.pipeline.interleave_ground(encoded, instruction)
        except Exception as err:
            self._model_error(err, instruction, self._frame_info(frame))
            return
        watch.mark("ground")
        labels, regions = grounding_regions(grounding.segments, frame.size)
        self._publish_outputs("grounding", frame, labels, regions, watch, received, instruction, encoded=encoded)

    def _process_instruction(self, raw: str, received: float) -> None:
        watch = Stopwatch()
        limit = self.params.max_instruction_chars
        if len(raw) > limit:
            self._publish_error("instruction_too_long", f"the instruction has {len(raw)} characters, "
                                f"max_instruction_chars is {limit} (inline images count: send a smaller crop, "
                                "or refer to a buffered frame by frame_stamp)")
            return
        if is_clear(raw):
            had = self._standing
            self._standing = None
            self._log.info("instruction cleared" if had else "clear received (no standing instruction)")
            self._pub_results.publish(String(data=Result(
                "cleared", self.get_fully_qualified_name(), had.id if had else None, had.text if had else None,
                stats=self._stats()).to_json()))
            return
        try:
            instruction = parse_instruction(raw)
        except InstructionError as err:
            self._publish_error("invalid_json" if err.field == "json" else "invalid_instruction", err.message,
                                err.field or None)
            return
        frames = self._buffer.snapshot()
        if not frames:
            self._publish_error("no_frames", "no frame has been received yet; publish images on "
                                f"{self._resolve('image')} first", instruction=instruction)
            return
        try:
            resolved = resolve_frame_references(instruction, self._buffer)
        except ReferenceProblem as err:
            self._publish_error(err.code, err.message, err.field, instruction=instruction)
            return
        watch.mark("parse")
        try:
            located = self.pipeline.localize([f.rgb for f in frames], resolved,
                                             gallery=self._buffer.gallery(frames))
        except Exception as err:
            self._model_error(err, instruction)
            return
        watch.mark("localize")
        best = frames[located.best_index]
        localization = LocalizationInfo([f.stamp for f in frames], [float(s) for s in located.frame_scores],
                                        located.best_index, best.stamp)
        labels, regions = grounding_regions(located.grounding.segments, best.size)
        self._pub_localized.publish(rgb_to_image(best.rgb, self._header(best)))
        self._publish_outputs("localization", best, labels, regions, watch, received, resolved, localization)
        if self.params.standing and self.params.mode == "localize":
            self._standing = resolved
            self._log.info(f"standing instruction {resolved.id}: {resolved.text!r}")

    # ---- depth ------------------------------------------------------------------------------------
    def _pair_depth(self, stamp: float, image_frame_id: str) -> tuple[DepthFrame | None, str | None]:
        """The frame's depth, or None and the reason (results_schema.POSITION_REASONS) why there is none."""
        if not self.params.depth.enabled:
            return None, "depth_disabled"
        return self._depth.pair(stamp, image_frame_id)

    # ---- publishing --------------------------------------------------------------------------------
    @staticmethod
    def _header(frame: BufferedFrame) -> Header:
        header = Header(frame_id=frame.frame_id)
        header.stamp.sec, header.stamp.nanosec = frame.sec, frame.nanosec
        return header

    def _publish_embeddings(self, frame: BufferedFrame, encoded: EncodedImage | None = None) -> EmbeddingInfo | None:
        try:
            result = self.pipeline.embed_pixels(encoded if encoded is not None else frame.rgb)
        except Exception as err:
            self._model_error(err, frame=self._frame_info(frame))
            return None
        try:   # pooled, projected and cast as the embeddings.* parameters say (find_ros.embedding_transport)
            msg, info = self._transport.message(result.embeddings, result.stride, self._header(frame))
        except ImageConversionError as err:
            self._model_error(err, frame=self._frame_info(frame))
            return None
        self._pub_embeddings.publish(msg)
        return info

    def _publish_outputs(self, kind: str, frame: BufferedFrame, labels: np.ndarray, regions: list[tuple],
                         watch: Stopwatch, received: float, instruction: Instruction | None = None,
                         localization: LocalizationInfo | None = None, encoded: EncodedImage | None = None) -> None:
        """masks, embeddings, overlay, 3D markers and the result for one frame's labelled regions
        (`encoded`: the frame's encoding when it is the frame just processed)."""
        header = self._header(frame)
        entities = []
        for label_id, index, label, entity_kind, score, class_id in regions:
            area, box = region_stats(labels, label_id)
            entities.append(EntityInfo(int(label_id), int(index), str(label), entity_kind, float(score), area, box,
                                       None if class_id is None else int(class_id)))
        self._pub_masks.publish(labels_to_image(labels, header))
        watch.mark("publish")                    # so that embed_pixels times the embeddings alone
        embedding_info = None
        if self.params.embeddings.enabled:
            embedding_info = self._publish_embeddings(frame, encoded)
            watch.mark("embed_pixels")
        depth, reason = (frame.depth, None) if frame.depth is not None else self._pair_depth(frame.stamp,
                                                                                               frame.frame_id)
        p = self.params.depth
        for entity in entities:
            place_entity(entity, labels, depth, reason, p.min_valid_fraction, p.box_percentile)
        if depth is not None:
            self._pub_entities.publish(entity_markers(entities, Header(stamp=header.stamp, frame_id=depth.frame_id)))
            watch.mark("depth")
        elif reason != "depth_disabled":
            self._log.info(f"no 3D positions: {reason} ({POSITION_REASONS[reason]})", throttle_duration_sec=10.0)
        if self.params.publish_overlay:
            self._pub_overlay.publish(rgb_to_image(overlay_image(frame.rgb, labels, entities), header))
        watch.mark("publish")
        timings = watch.total()
        timings["latency"] = round((time.perf_counter() - received) * 1000.0, 3)
        self._latencies.append(timings["latency"])
        result = Result(kind, self.get_fully_qualified_name(), instruction.id if instruction else None,
                        instruction.text if instruction else None, self._frame_info(frame), localization,
                        entities, embedding_info, timings, self._stats())
        self._pub_results.publish(String(data=result.to_json()))

    def _report(self) -> None:
        """Periodic FPS / latency log line and ~/status message."""
        stats, last_stamp = self._stats_and_stamp()
        latency = float(np.mean(self._latencies)) if self._latencies else 0.0
        newest = self._buffer.latest()
        self._log.info(f"fps={stats['fps']:.1f} latency={latency:.0f}ms received={stats['frames_received']} "
                       f"processed={stats['frames_processed']} dropped={stats['frames_dropped']} "
                       f"missed={stats['frames_missed']} errors={stats['errors']} buffered={stats['buffered']}")
        status = {"schema_version": 1, "node": self.get_fully_qualified_name(), "stats": stats,
                  "mean_latency_ms": round(latency, 3),
                  "last_processed_stamp": last_stamp,
                  "newest_buffered_stamp": newest.stamp if newest else None,
                  "standing_instruction_id": self._standing.id if self._standing else None,
                  "camera_reliability": {name: sub.current for name, sub in self._inputs.items()}}
        self._pub_status.publish(String(data=json.dumps(status)))


def main(argv: list[str] | None = None) -> int:
    return run_node(argv, FindPerceptionNode, "find_perception", StartupError, PerceptionParams,
                    __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
