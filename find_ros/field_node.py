"""find_field: fuse find_perception's per-pixel embeddings into a 3D feature map online, and query it.

A thin adapter from topics to :mod:`find_core.field` (see docs/ros_interface.md, "find_field"):

* Inputs are matched **by header stamp**: each ``embeddings`` image (``32FC<D>`` / ``16FC<D>``, the
  perception node's ``~/embeddings``) waits in a small keyed buffer until a ``depth`` image, a
  ``camera_info`` and a camera ``pose`` (``geometry_msgs/PoseStamped`` or ``nav_msgs/Odometry``; pip
  installs have no tf2) with the same stamp (within a tolerance) have arrived. Embeddings whose
  partners never come within ``match_timeout`` are counted ``unmatched`` and never fused.
* Integration into :class:`~find_core.field.FeatureFusion` runs on a worker thread at most
  ``max_rate_hz`` times a second and always takes the **newest** matched frame: older waiting frames
  are dropped and counted ``skipped``, so a slow map never builds a backlog. Queries and commands run
  on a second worker, so fusion goes on while a query is answered.
* Depth and camera_info may have another resolution than the image the embeddings were computed on:
  K is rescaled to the depth image, and the embedding cell size is converted to depth pixels
  (:func:`depth_stride`).
* ``~/query`` (plain text, the instruction JSON schema v1, or a raw embedding) is answered on
  ``~/answer`` (JSON below), ``~/relevancy`` (PointCloud2 x, y, z, rgb, relevancy) and ``~/objects``
  (MarkerArray). Query embeddings come from a FindPipeline loaded once at start with the perception
  node's model parameters, projected like the perception node's embeddings when it reduced them.
  A query scores the live table in place (:mod:`find_core.field.live`): the map is never copied.
* ``~/command``: ``save``, ``save <path>``, ``clear``; the map is also saved on shutdown (``map_path``).
* Maps continue, forget and say "not here" (:mod:`find_ros.field_map`): ``map`` loads a saved map to
  fuse on into (one of another voxel size, width, model or frame is refused at start); an optional
  ``image`` topic colours it; voxels keep when they were last seen and free space seen through them
  decays them (:mod:`find_core.field.forget`); answers are ``found: false`` below the model's
  calibrated threshold (``query.not_here_threshold``, :mod:`find_core.field.abstain`).
* Bad input never stops the node: it is counted in ``~/status`` and logged, bad queries get error
  answers.
* Input reliability follows the publishers by default (``camera_reliability: auto``, see
  :mod:`find_ros.qos`): the perception node's ``~/embeddings`` are megabytes and reliable.
* SIGINT / SIGTERM stop it cleanly in any state (:mod:`find_ros.node_runner`): the worker finishes
  the frame or query in hand, the map is saved (``map_path``), then the context goes.

Its parts: parameters in :mod:`find_ros.field_params`, stamp pairing in :mod:`find_ros.frame_matching`,
the ``~/query`` / ``~/answer`` schema in :mod:`find_ros.answer_schema`, query embeddings in
:mod:`find_ros.query_embedder`, the cloud and markers in :mod:`find_ros.visuals`.

Run: ``python -m find_ros.field_node --ros-args --params-file config/find_field.yaml``.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from find_core.field import FeatureFusion, ObjectConfig, decide
from find_core.field.live import live_view, locate_live
from find_core.field.objects import cut_off
from find_core.messages import pose_matrix, stamp_ns, stamp_seconds

from .answer_schema import QueryError, QuerySpec, answer_doc, parse_query
from .entity_geometry import scale_intrinsics
from .field_map import check_width, continue_map, frame_colour, map_metadata, model_identity, not_here_threshold, save_files
from .field_params import FieldParams, parse_offset
from .frame_matching import Bundle, FrameMatcher, GridMismatch, StampBuffer, depth_stride
from .image_conversion import ImageConversionError, depth_to_meters, image_to_embeddings
from .node_runner import NodeWorker, PublishGate, run_node, stop_workers
from .params import ParameterError, declare_params
from .qos import REFRESH_PERIOD, CameraSubscription, image_output_qos, instruction_qos, results_qos
from .node_stats import recent_rate
from .query_embedder import field_query, load_query_embedder
from .startup import StartupError
from .visuals import object_markers, relevancy_cloud

MAX_REQUESTS = 32          # queries/commands waiting for the worker


# --------------------------------------------------------------------------- the node


class FindFieldNode(Node):
    """See the module docstring and docs/ros_interface.md."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("find_field", **kwargs)
        try:
            self.params = declare_params(self, FieldParams)
        except ParameterError as err:
            raise StartupError(str(err)) from None
        p = self.params
        self._log = self.get_logger()
        self._fqn = self.get_fully_qualified_name()   # also after destroy_node (the shutdown save)
        if p.cpu_threads:
            import torch
            torch.set_num_threads(p.cpu_threads)
        self._offset = parse_offset(p.pose_offset)
        try:
            self._fusion_config = p.fusion.config(p.device)
            self._fusion = FeatureFusion(self._fusion_config)
        except ValueError as err:
            raise StartupError(f"cannot build the map: {err}") from None
        self._checkpoint, self._digest = model_identity(p)
        self._map_frame = p.map_frame
        if p.map:       # before the model loads: a map that cannot continue is refused at once
            loaded = continue_map(self._fusion, p, self._digest)
            self._map_frame = self._map_frame or loaded.metadata.get("map_frame") or ""
        self._embedder = load_query_embedder(p, self._log)
        self._query_width = self._embedder.width if self._embedder is not None else None
        if p.map:
            check_width(p.map, loaded.dim, self._query_width)
            self._log.info(f"continuing the map {p.map}: {len(loaded)} voxels, {loaded.dim}-d, "
                           f"{loaded.metadata.get('frames_fused')} frames fused before")
        self._threshold = not_here_threshold(p, self._checkpoint, self._digest, self._log.info) \
            if self._embedder is not None or p.query.not_here_threshold >= 0 else None
        self._objects = ObjectConfig(threshold=p.query.threshold or None, relative=p.query.relative,
                                     min_voxels=p.query.min_voxels, top_k=p.query.top_k)
        self._negatives = [n for n in p.query.negatives if n.strip()]

        self._cond = threading.Condition()        # guards everything the callbacks touch
        self._map_lock = threading.Lock()         # fusion vs. save, clear and the shutdown save (queries need none)
        self._matcher = FrameMatcher(p.sync_tolerance, p.pose_tolerance, p.match_timeout, p.buffer_seconds)
        self._requests: deque[tuple[str, str]] = deque()
        self._next_due = 0.0
        self._counts = dict(frames_fused=0, frames_rejected=0, queries=0, errors=0)
        self._rejected: dict[str, int] = {}
        self._fused_times: deque[float] = deque(maxlen=60)
        self._integrate_ms: deque[float] = deque(maxlen=60)
        self._last_fused_stamp: float | None = None
        self._reported_unmatched = 0
        self._worker = NodeWorker("find_field_worker", self._work, self._cond, self._log)
        self._answerer = NodeWorker("find_field_queries", self._answer, self._cond, self._log)

        self._gate = PublishGate()               # closed by shutdown(): nothing is published after that
        out = image_output_qos()
        self._pub_cloud = self._gate.wrap(self.create_publisher(PointCloud2, "~/relevancy", out))
        self._pub_objects = self._gate.wrap(self.create_publisher(MarkerArray, "~/objects", out))
        self._pub_answer = self._gate.wrap(self.create_publisher(String, "~/answer", results_qos()))
        self._pub_status = self._gate.wrap(self.create_publisher(String, "~/status", results_qos()))

        # keep-last 2 for images (newest wins downstream anyway), deeper for the small, frequent messages:
        # the matcher needs every depth / pose near an embeddings stamp, not only the newest
        m = self._matcher
        pose_type = PoseStamped if p.pose_type == "pose_stamped" else Odometry
        self._inputs = {name: CameraSubscription(self, kind, name, callback, depth, p.camera_reliability)
                        for name, kind, callback, depth in (
                            ("embeddings", Image, self._on_embeddings, 2),
                            ("depth", Image, lambda msg, _: self._on_partner(m.depths, msg), 2),
                            ("camera_info", CameraInfo, lambda msg, _: self._on_partner(m.infos, msg), 10),
                            ("pose", pose_type, lambda msg, _: self._on_partner(m.poses, msg), 50),
                            ("image", Image, lambda msg, _: self._on_partner(m.images, msg), 2))}
        self.create_timer(REFRESH_PERIOD, lambda: [s.refresh() for s in self._inputs.values()])
        self.create_subscription(String, "~/query", lambda m: self._on_request("query", m), instruction_qos())
        self.create_subscription(String, "~/command", lambda m: self._on_request("command", m), instruction_qos())
        if p.status_period > 0:
            self.create_timer(p.status_period, self._report)
        self._worker.start()
        self._answerer.start()
        names = ", ".join(s.topic_name for s in self._inputs.values())
        self._log.info(f"fusing {names} ({pose_type.__name__}, {p.camera_reliability}) into "
                       f"{p.fusion.voxel_size} m voxels at <= {p.max_rate_hz or 'unlimited'} Hz")

    def shutdown(self) -> None:
        """The workers finish the frame and the query in hand, then the publishers close."""
        stop_workers((self._worker, self._answerer), self._gate)

    def activity(self) -> str:
        busy = [w.job for w in (self._worker, self._answerer) if w.job]
        return f"busy ({'; '.join(busy)})" if busy else "idle"

    def save_on_exit(self) -> None:
        """Write the map to map_path (the worker must have stopped: see shutdown)."""
        if not self.params.map_path:
            return
        if self._fusion.table is None or self._fusion.table.size == 0:
            self._log.info("nothing fused: no map saved")
            return
        try:
            npz, ply = self._save(self.params.map_path)
            self._log.info(f"map saved to {npz} and {ply}")
        except (OSError, ValueError) as err:
            self._log.error(f"could not save the map to {self.params.map_path}: {err}")

    # ---- callbacks (executor thread): park messages, never compute ------------------------------
    def _on_embeddings(self, msg: Image, _info: Any = None) -> None:
        with self._cond:
            self._matcher.add_embeddings(stamp_ns(msg.header.stamp), msg, time.monotonic())
            self._cond.notify_all()

    def _on_partner(self, buffer: StampBuffer, msg: Any) -> None:
        with self._cond:
            buffer.add(stamp_ns(msg.header.stamp), msg)
            self._cond.notify_all()

    def _on_request(self, kind: str, msg: String) -> None:
        with self._cond:
            if len(self._requests) >= MAX_REQUESTS:
                self._requests.popleft()
                self._log.warning(f"more than {MAX_REQUESTS} queries/commands waiting; the oldest was dropped")
            self._requests.append((kind, msg.data))
            self._cond.notify_all()

    # ---- worker threads: fusion in one, queries and commands in the other -------------------------
    # A query scores the live table while frames go on being fused (it takes no lock; the map lock is
    # held for a frame's fusion, a save's copy or a clear), so a slow query drops no frames.
    def _work(self) -> None:
        stop = self._worker.stop
        while not stop.is_set():
            with self._cond:
                def ready() -> bool:
                    return stop.is_set() or (time.monotonic() >= self._next_due and self._matcher.newest() is not None)
                wait = min(0.1, max(self._next_due - time.monotonic(), 0.0)) or 0.1
                self._cond.wait_for(ready, timeout=wait)
                self._matcher.expire(time.monotonic())
                due = not stop.is_set() and time.monotonic() >= self._next_due
                bundle = self._matcher.take() if due else None
            if bundle:
                self._worker.run_jobs([(self._fuse, (bundle,), "fusing a frame")], self._internal_error)

    def _answer(self) -> None:
        stop = self._answerer.stop
        while not stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: stop.is_set() or bool(self._requests), timeout=0.1)
                requests = list(self._requests)
                self._requests.clear()
            self._answerer.run_jobs([(self._request, (r,), f"a {r[0]}") for r in requests], self._internal_error)

    def _internal_error(self, err: Exception) -> None:
        self._publish_error(QueryError("internal_error", f"{type(err).__name__}: {err}"))

    def _reject(self, reason: str, message: str) -> None:
        with self._cond:
            self._counts["frames_rejected"] += 1
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
        self._log.warning(f"frame rejected ({reason}): {message}", throttle_duration_sec=2.0)

    def _fuse(self, bundle: Bundle) -> None:
        started = time.monotonic()
        if self.params.max_rate_hz > 0:
            self._next_due = started + 1.0 / self.params.max_rate_hz
        try:
            embeddings = image_to_embeddings(bundle.embeddings).astype(np.float32, copy=False)
        except ImageConversionError as err:
            return self._reject("bad_embeddings_message", str(err))
        try:
            depth = depth_to_meters(bundle.depth)
        except ImageConversionError as err:
            return self._reject("bad_depth_message", str(err))
        info = bundle.camera_info
        K = np.asarray(info.k, np.float64).reshape(3, 3)
        if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            return self._reject("bad_camera_info", f"K has no positive focal lengths: {K.ravel().tolist()}")
        reference = (int(info.height), int(info.width)) if info.width and info.height else depth.shape
        if reference != depth.shape:
            K = scale_intrinsics(K, reference, depth.shape)
        try:
            stride = depth_stride(depth.shape, embeddings.shape[:2], self.params.embeddings.stride, reference)
        except GridMismatch as err:
            return self._reject("grid_mismatch", str(err))
        frame = bundle.pose.header.frame_id
        pose = pose_matrix(bundle.pose) @ self._offset
        rgb = None
        if bundle.image is not None:
            try:
                rgb = frame_colour(bundle.image, depth.shape)
            except ImageConversionError as err:       # fuse the frame anyway, without colour
                self._log.warning(f"colour image not used: {err}", throttle_duration_sec=2.0)
        with self._map_lock:
            if not self._map_frame:
                self._map_frame = frame
            elif frame and frame != self._map_frame:
                return self._reject("pose_frame_mismatch", f"pose in frame {frame!r}, the map is in {self._map_frame!r}")
            before = dict(self._fusion.stats.skipped)
            try:
                fused = self._fusion.integrate(depth, pose, K, embeddings, stride, rgb=rgb, stamp=bundle.stamp * 1e-9)
            except ValueError as err:       # e.g. the embedding width changed: a configuration problem
                return self._reject("bad_frame", str(err))
            if not fused:
                reason = next((k for k, v in self._fusion.stats.skipped.items() if v > before.get(k, 0)), "skipped")
                return self._reject(reason, f"frame at {bundle.stamp * 1e-9:.3f} was not fused")
        elapsed = time.monotonic() - started
        with self._cond:
            self._counts["frames_fused"] += 1
            self._last_fused_stamp = bundle.stamp * 1e-9
        self._fused_times.append(time.monotonic())
        self._integrate_ms.append(elapsed * 1000.0)

    # ---- queries and commands ------------------------------------------------------------------------
    def _request(self, request: tuple[str, str]) -> None:
        kind, raw = request
        if kind == "command":
            self._command(raw)
        else:
            self._query(raw)

    def _metadata(self) -> dict[str, Any]:
        return map_metadata(self.params, self._fqn, self._map_frame, self._digest)

    def _query(self, raw: str) -> None:
        started = time.perf_counter()
        with self._cond:
            self._counts["queries"] += 1
        spec = None
        try:
            spec = parse_query(raw)
            view = live_view(self._fusion)    # no copy and no lock: never waits for the frame being fused
            if view is None or not (view.weights > 0).any():
                raise QueryError("empty_map", "nothing has been fused yet: publish embeddings with matching depth, "
                                              "camera_info and pose")
            query = field_query(spec, view.dim, self._embedder, self._negatives, self.params.query.temperature,
                                self.params.embeddings.dims,
                                lambda message: self._log.error(message, throttle_duration_sec=1.0))
            embedded = time.perf_counter()
            live = locate_live(view, query, self._objects)
            relevancy, objects = live.relevancy, live.objects
            scored = time.perf_counter()
        except QueryError as err:
            self._publish_error(err, spec)
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self._map_frame or "map")
        self._pub_cloud.publish(relevancy_cloud(live.positions, relevancy, header))
        self._pub_objects.publish(object_markers(objects, header, spec.text, view.voxel_size))
        done = time.perf_counter()
        summary = {"max": round(float(relevancy.max()), 4), "mean": round(float(relevancy.mean()), 4),
                   "threshold": round(float(cut_off(relevancy, self._objects)), 4)}
        timings = {"embed": (embedded - started) * 1e3, "relevancy": (scored - embedded) * 1e3,
                   "publish": (done - scored) * 1e3, "total": (done - started) * 1e3}
        decision = decide(objects, self._threshold)
        map_info = {"voxels": len(relevancy), "dim": view.dim, "voxel_size": view.voxel_size,
                    "frames_fused": view.frames_fused}
        doc = answer_doc("answer", self._fqn, header.frame_id, spec=spec, map_info=map_info, relevancy=summary,
                         objects=objects, timings={k: round(v, 3) for k, v in timings.items()},
                         stamp=stamp_seconds(header), decision=decision)
        self._pub_answer.publish(String(data=json.dumps(doc)))
        best = f"best at {objects[0].to_json()['centroid']} score {objects[0].score:.2f}" if objects else "no object"
        best += "" if decision.found else f" -> not here ({decision.reason})"
        self._log.info(f"query {spec.kind} {spec.text!r}: {len(objects)} object(s), {best}")

    def _save(self, target: str) -> tuple[Path, Path]:
        with self._map_lock:
            if self._fusion.table is None or self._fusion.table.size == 0:
                raise QueryError("empty_map", "nothing has been fused yet")
            fmap, coloured = self._fusion.to_map(self._metadata()), self._fusion.stats.coloured > 0
        return save_files(fmap, target, coloured)

    def _command(self, raw: str) -> None:
        words = raw.strip().split(maxsplit=1)
        name = words[0].lower() if words else ""
        frame = self._map_frame or "map"
        node = self._fqn
        try:
            if name == "save":
                target = words[1].strip() if len(words) > 1 else self.params.map_path
                if not target:
                    raise QueryError("invalid_command", "'save' needs a path: 'save /path/map.npz' or the map_path "
                                                        "parameter")
                if Path(target).suffix not in ("", ".npz"):
                    raise QueryError("invalid_command", f"map files end in .npz, got {target!r}")
                try:
                    npz, ply = self._save(target)
                except (OSError, ValueError) as err:
                    raise QueryError("save_failed", f"{type(err).__name__}: {err}") from None
                doc = answer_doc("saved", node, frame, kind="command", text=raw.strip(),
                                 files={"map": str(npz), "ply": str(ply)})
                self._log.info(f"map saved to {npz} and {ply}")
            elif name == "clear" and len(words) == 1:
                with self._map_lock:
                    self._fusion = FeatureFusion(self._fusion_config)
                    self._map_frame = self.params.map_frame
                doc = answer_doc("cleared", node, frame, kind="command", text="clear")
                self._log.info("map cleared")
            else:
                raise QueryError("invalid_command", f"unknown command {raw.strip()!r}; use 'save', 'save <path>' "
                                                    "or 'clear'")
        except QueryError as err:
            self._publish_error(err, kind="command", text=raw.strip())
            return
        self._pub_answer.publish(String(data=json.dumps(doc)))

    def _publish_error(self, err: QueryError, spec: QuerySpec | None = None, kind: str | None = None,
                       text: str | None = None) -> None:
        with self._cond:
            self._counts["errors"] += 1
        where = f" ({err.field})" if err.field else ""
        self._log.warning(f"{err.code}{where}: {err.message}", throttle_duration_sec=1.0)
        doc = answer_doc("error", self._fqn, self._map_frame or "map", spec=spec, kind=kind,
                         text=text, error=err)
        self._pub_answer.publish(String(data=json.dumps(doc)))

    # ---- status --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._cond:
            m = self._matcher.counts
            stats: dict[str, Any] = {"frames_received": m["received"], "frames_fused": self._counts["frames_fused"],
                                     "frames_skipped": m["skipped"], "frames_unmatched": m["unmatched"],
                                     "frames_rejected": self._counts["frames_rejected"],
                                     "queries": self._counts["queries"], "errors": self._counts["errors"]}
            rejected = dict(self._rejected)
            last = self._last_fused_stamp
            waiting = len(self._matcher.pending)
            last_unmatched = self._matcher.last_unmatched
        stats["fusion_hz"] = recent_rate(list(self._fused_times), time.monotonic())
        table = self._fusion.table
        return {"schema_version": 1, "node": self._fqn, "map_frame": self._map_frame or None,
                "stats": stats, "rejected": rejected, "waiting": waiting,
                "map": {"voxels": 0 if table is None else int(table.size), "dim": None if table is None else table.dim,
                        "voxel_size": self.params.fusion.voxel_size, "frames_fused": self._fusion.stats.fused,
                        "frames_coloured": self._fusion.stats.coloured, "voxels_forgotten": self._fusion.stats.forgotten},
                "mean_integrate_ms": round(float(np.mean(self._integrate_ms)), 3) if self._integrate_ms else 0.0,
                "last_fused_stamp": last, "last_unmatched": last_unmatched,
                "camera_reliability": {name: sub.current for name, sub in self._inputs.items()}}

    def _report(self) -> None:
        doc = self.status()
        s = doc["stats"]
        self._log.info(f"received={s['frames_received']} fused={s['frames_fused']} skipped={s['frames_skipped']} "
                       f"unmatched={s['frames_unmatched']} rejected={s['frames_rejected']} {doc['rejected'] or ''} "
                       f"voxels={doc['map']['voxels']} {s['fusion_hz']:.1f} Hz "
                       f"integrate={doc['mean_integrate_ms']:.0f} ms queries={s['queries']} errors={s['errors']}")
        if s["frames_unmatched"] > self._reported_unmatched:
            self._reported_unmatched = s["frames_unmatched"]
            self._log.warning(f"{s['frames_unmatched']} frame(s) unmatched so far; latest {doc['last_unmatched']}")
        self._pub_status.publish(String(data=json.dumps(doc)))


def main(argv: list[str] | None = None) -> int:
    return run_node(argv, FindFieldNode, "find_field", StartupError, FieldParams, __doc__.split("\n\n")[0],
                    after_destroy=lambda node: node.save_on_exit())


if __name__ == "__main__":
    sys.exit(main())
