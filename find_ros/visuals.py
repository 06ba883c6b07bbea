"""What people look at: label colours, the overlay image, rviz markers and the relevancy cloud.

Both nodes draw with the same colours (:func:`colour` of a label id or rank) and build their
MarkerArrays from the same :func:`marker`, so a box looks the same whichever node published it.
Nothing here touches a node: messages in, messages out.
"""
from __future__ import annotations

import array
import colorsys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from .results_schema import EntityInfo

if TYPE_CHECKING:  # find_core.field pulls in Open3D: only find_field needs it
    from find_core.field import FieldObject

OVERLAY_LABEL_CHARS = 40      # longer entity labels are clipped on the overlay and on markers
CLOUD_FIELDS = ("x", "y", "z", "rgb", "relevancy")


def colour(label_id: int) -> tuple[int, int, int]:
    """A distinct, stable colour per label id (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label_id * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def clip(text: str, limit: int = OVERLAY_LABEL_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with '...'), on one line: for drawing, not for data."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def overlay_image(rgb: np.ndarray, labels: np.ndarray, entities: list[EntityInfo]) -> np.ndarray:
    """The frame with each label's pixels tinted in its colour, its box outlined and its label written."""
    out = rgb.astype(np.float32)
    for entity in entities:
        selected = labels == entity.label_id
        out[selected] = 0.5 * out[selected] + 0.5 * np.array(colour(entity.label_id), np.float32)
    image = PILImage.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for entity in entities:
        if entity.box is not None:
            x0, y0, x1, y1 = entity.box
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour(entity.label_id))
            draw.text((x0 + 2, y0 + 1), f"{entity.label_id}:{clip(entity.label)} {entity.score:.2f}",
                      fill=(255, 255, 255))
    return np.asarray(image)


def marker(header: Header, ns: str, marker_id: int, shape: int, position: Sequence[float], scale: Sequence[float],
           colour_id: int, alpha: float, text: str = "") -> Marker:
    """One ADD marker, unrotated, in :func:`colour` of ``colour_id``."""
    out = Marker(header=header, ns=ns, id=marker_id, type=shape, action=Marker.ADD)
    out.pose.position.x, out.pose.position.y, out.pose.position.z = (float(v) for v in position)
    out.pose.orientation.w = 1.0
    out.scale.x, out.scale.y, out.scale.z = (float(v) for v in scale)
    r, g, b = (c / 255.0 for c in colour(colour_id))
    out.color.r, out.color.g, out.color.b, out.color.a = r, g, b, alpha
    out.text = text
    return out


def entity_markers(entities: Sequence[EntityInfo], header: Header) -> MarkerArray:
    """find_perception's ~/entities: a DELETEALL, then box, centroid and label markers (ns find/box,
    find/centroid, find/label; id = label id) of every entity that has a 3D position."""
    markers = MarkerArray()
    markers.markers.append(Marker(action=Marker.DELETEALL))
    for entity in entities:
        if entity.position is None or entity.box_3d is None:
            continue
        center, extent = np.asarray(entity.box_3d["center"]), np.asarray(entity.box_3d["extent"])
        label_at = center - [0.0, extent[1] / 2 + 0.05, 0.0]
        markers.markers += [
            marker(header, "find/box", entity.label_id, Marker.CUBE, center, np.maximum(extent, 0.005),
                   entity.label_id, 0.35),
            marker(header, "find/centroid", entity.label_id, Marker.SPHERE, entity.position, np.full(3, 0.04),
                   entity.label_id, 1.0),
            marker(header, "find/label", entity.label_id, Marker.TEXT_VIEW_FACING, label_at, np.full(3, 0.06),
                   entity.label_id, 1.0, f"{clip(entity.label)} {entity.score:.2f}")]
    return markers


def object_markers(objects: Sequence[FieldObject], header: Header, label: str, voxel_size: float) -> MarkerArray:
    """find_field's ~/objects: DELETEALL, then per object a translucent CUBE (its box, ns
    find_field/box) and a TEXT label above it (ns find_field/label); marker id and colour = rank."""
    markers = MarkerArray()
    markers.markers.append(Marker(header=header, action=Marker.DELETEALL))
    for rank, obj in enumerate(objects, 1):
        center = (obj.box_min + obj.box_max) / 2.0
        size = np.maximum(obj.box_max - obj.box_min, voxel_size)
        markers.markers += [
            marker(header, "find_field/box", rank, Marker.CUBE, center, size, rank, 0.4),
            marker(header, "find_field/label", rank, Marker.TEXT_VIEW_FACING, center + [0.0, 0.0, size[2] / 2 + 0.06],
                   np.full(3, 0.06), rank, 1.0, f"{rank}: {label} {obj.score:.2f}")]
    return markers


def relevancy_cloud(points: np.ndarray, relevancy: np.ndarray, header: Header) -> PointCloud2:
    """An unordered PointCloud2 of float32 fields x, y, z, rgb (packed 0x00RRGGBB, coloured like
    write_relevancy_ply: blue at <= 0.5 to red at 1) and relevancy."""
    from find_core.field.io import relevancy_colors

    points = np.asarray(points, np.float64)
    relevancy = np.asarray(relevancy, np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) != len(relevancy):
        raise ValueError(f"need N×3 points and N relevancy values, got {points.shape} and {relevancy.shape}")
    rows = np.zeros(len(points), np.dtype([(name, "<f4") for name in CLOUD_FIELDS]))
    for axis, name in enumerate("xyz"):
        rows[name] = points[:, axis]
    rgb = np.round(relevancy_colors(np.clip((relevancy - 0.5) / 0.5, 0.0, 1.0)) * 255).astype(np.uint32)
    rows["rgb"] = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).astype("<u4").view("<f4")
    rows["relevancy"] = relevancy
    msg = PointCloud2(header=header, height=1, width=len(rows), is_bigendian=False,
                      point_step=rows.dtype.itemsize, row_step=rows.dtype.itemsize * len(rows), is_dense=True)
    msg.fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, name in enumerate(CLOUD_FIELDS)]
    msg.data = array.array("B", rows.tobytes())
    return msg


def pca_colors(features: np.ndarray) -> np.ndarray:
    """N×3 uint8: the first three principal components of the unit features, each stretched to 0-255
    (a colour preview of the embedding field; similar embeddings get similar colours)."""
    f = np.asarray(features, np.float64)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
    f -= f.mean(axis=0)
    _, vectors = np.linalg.eigh(f.T @ f)
    top = vectors[:, ::-1][:, :3]
    projected = np.zeros((len(f), 3))
    projected[:, :top.shape[1]] = f @ top
    low, high = projected.min(axis=0), projected.max(axis=0)
    scaled = (projected - low) / np.where(high > low, high - low, 1.0)
    return np.round(scaled * 255).astype(np.uint8)
