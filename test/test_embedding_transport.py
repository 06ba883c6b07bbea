"""~/embeddings reductions (find_ros.embedding_transport): pooling, projection, float16, the Image and
the results' embeddings block, the parameters, and a real find_perception process publishing them in
a form find_field's grid rule reads (no mocks: rclpy messages and a node process over DDS)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from find_ros.embedding_transport import EmbeddingTransport, fast_float16, pool_cells
from find_ros.frame_matching import depth_stride
from find_ros.image_conversion import ImageConversionError, embeddings_to_image, image_to_embeddings, rgb_to_image
from find_ros.params import EmbeddingParams, PerceptionParams
from find_ros.process_harness import START_TIMEOUT, NodeProcess, Probe, next_domain, stop_all
from find_ros.results_schema import check_result, projection_matrix


def unit_grid(height: int, width: int, dims: int, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((height, width, dims)).astype(np.float32)
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def test_pool_cells_averages_blocks_renormalises_and_keeps_partial_edge_blocks():
    grid = unit_grid(5, 7, 6)
    assert pool_cells(grid, 1) is grid
    pooled = pool_cells(grid, 2)
    assert pooled.shape == (3, 4, 6)                                  # ceil: the edge cells are kept
    for r in range(3):
        for c in range(4):
            block = grid[2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(-1, 6)
            mean = block.mean(axis=0)
            np.testing.assert_allclose(pooled[r, c], mean / np.linalg.norm(mean), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, atol=1e-5)


def test_transport_from_params_projection_rules():
    assert EmbeddingTransport.from_params(32, "float16", 0, 0, 1).projection is None
    assert EmbeddingTransport.from_params(32, "float16", 32, 5, 1).projection is None   # the model's width
    reduced = EmbeddingTransport.from_params(32, "float32", 8, 3, 1)
    np.testing.assert_array_equal(reduced.projection, projection_matrix(32, 8, 3))
    assert reduced.projection_seed == 3
    with pytest.raises(ValueError, match="only 32 channels"):
        EmbeddingTransport.from_params(32, "float16", 33, 0, 1)


@pytest.mark.parametrize("dtype, dims, subsample", [("float16", 0, 1), ("float32", 0, 1), ("float16", 8, 2),
                                                    ("float32", 8, 4)])
def test_message_decodes_to_the_reduced_grid_and_describes_it(dtype: str, dims: int, subsample: int):
    grid = unit_grid(24, 32, 32, seed=1)
    transport = EmbeddingTransport.from_params(32, dtype, dims, 7, subsample)
    header = Header(frame_id="cam")
    header.stamp.sec = 12
    msg, info = transport.message(grid, 20.0, header)
    decoded = image_to_embeddings(msg)
    expected = transport.reduce(grid)
    width = dims or 32
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 12
    assert msg.encoding == info.encoding == f"{'16' if dtype == 'float16' else '32'}FC{width}"
    assert decoded.dtype == (np.float16 if dtype == "float16" else np.float32)
    assert decoded.shape == expected.shape == (-(-24 // subsample), -(-32 // subsample), width)
    assert (info.height, info.width, info.dims, info.source_dims) == (*decoded.shape, 32)
    assert info.stride == 20.0 * subsample
    assert info.projection_seed == (7 if dims else None)
    np.testing.assert_allclose(decoded.astype(np.float32), expected, atol=1e-3 if dtype == "float16" else 0)
    if dims:   # e @ P of the pooled, re-normalised cells
        np.testing.assert_allclose(expected, pool_cells(grid, subsample) @ projection_matrix(32, dims, 7), atol=1e-5)


def test_float16_keeps_every_cells_best_match():
    """What a consumer reads from a unit-vector grid (each cell's best text match) survives float16."""
    grid, texts = unit_grid(24, 32, 64, seed=2), unit_grid(1, 20, 64, seed=3)[0]
    msg, _ = EmbeddingTransport.from_params(64, "float16", 0, 0, 1).message(grid, 4.0)
    received = image_to_embeddings(msg).astype(np.float32)
    np.testing.assert_array_equal((received @ texts.T).argmax(-1), (grid @ texts.T).argmax(-1))
    assert np.abs(received @ texts.T - grid @ texts.T).max() < 2e-3


def test_float16_overflow_and_nan_are_handled_not_hidden():
    big = np.full((2, 2, 4), 1e6, np.float32)
    assert fast_float16(big).dtype == np.float32           # left to the exact check below
    with pytest.raises(ImageConversionError, match="overflow float16"):
        EmbeddingTransport(dtype="float16").message(big, 4.0)
    nan = unit_grid(2, 2, 4)
    nan[0, 0, 0] = np.nan
    decoded = image_to_embeddings(EmbeddingTransport(dtype="float16").message(nan, 4.0)[0])
    assert np.isnan(decoded[0, 0, 0]) and np.isfinite(decoded.reshape(-1)[1:]).all()
    # the fast overflow decision agrees with the exact one on float64 input too
    with pytest.raises(ImageConversionError, match="overflow float32"):
        embeddings_to_image(np.full((1, 1, 2), 1e300), dtype="float32")
    assert image_to_embeddings(embeddings_to_image(np.full((1, 1, 2), 0.5), dtype="float16")).tolist() == [[[0.5, 0.5]]]


def test_embedding_params_defaults_and_subsample_rule():
    assert EmbeddingParams().dtype == "float16" and EmbeddingParams().subsample == 1
    for good in (1, 2, 4, 8):
        assert PerceptionParams(embeddings=EmbeddingParams(subsample=good)).problems() == []
    for bad in (0, 3, 16):
        assert any("embeddings.subsample" in p for p in PerceptionParams(embeddings=EmbeddingParams(subsample=bad)).problems())


def test_pooled_grid_fits_find_fields_grid_rule():
    """find_field's embeddings.stride 0 reads the cell size off the grid's longer side: a pooled grid of
    a letterboxed frame must still hold a whole number of cells there."""
    for frame, model_grid in (((480, 640), (24, 32)), ((96, 128), (24, 32)), ((480, 360), (32, 24))):
        stride = frame[1] / model_grid[1] if frame[1] >= frame[0] else frame[0] / model_grid[0]
        for subsample in (1, 2, 4, 8):
            pooled = pool_cells(unit_grid(*model_grid, 4), subsample).shape[:2]
            assert depth_stride(frame, pooled, 0.0) == pytest.approx(stride * subsample)


@pytest.mark.ros
def test_perception_node_publishes_pooled_float16_embeddings(tmp_path: Path):
    """A real find_perception (tiny-test model, input 128 on 128×96 frames: a 32×24 grid, stride 4)
    with embeddings.subsample 2 publishes 16FC32 grids of 16×12 unit vectors, stride 8 in its result."""
    domain = next_domain()
    node = NodeProcess("find_ros.perception_node", domain, {
        "model_preset": "tiny-test", "input_size": 128, "processing_max_side": 0, "stats_period": 0.0,
        "publish_overlay": False, "depth": {"enabled": False},
        "embeddings": {"subsample": 2, "every_frame": True}}, ["image:=/cam/image"], tmp_path / "perception")
    probe = Probe(domain, node)
    try:
        probe.listen("/find_perception/embeddings", Image)
        probe.listen("/find_perception/results", String)
        image = probe.publisher("/cam/image", Image)
        instruction = probe.publisher("/instruction", String)
        probe.wait_for(lambda: image.get_subscription_count() > 0 and instruction.get_subscription_count() > 0,
                       "find_perception to start", START_TIMEOUT)
        rgb = np.zeros((96, 128, 3), np.uint8)
        rgb[20:60, 30:80] = (200, 40, 40)
        frame = rgb_to_image(rgb)
        frame.header.stamp.sec = 5

        sent = [0.0]

        def ours() -> list[Image]:   # by stamp: another test run may share the domain id by chance
            return [m for m in probe.messages["/find_perception/embeddings"]
                    if (m.header.stamp.sec, m.header.stamp.nanosec) == (5, 0)]

        def embeddings_arrived() -> bool:
            if ours():
                return True
            if time.monotonic() - sent[0] > 0.5:   # resent until the node's side of the match is complete
                image.publish(frame)
                sent[0] = time.monotonic()
            return False
        probe.wait_for(embeddings_arrived, "embeddings of the frame")
        msg = ours()[0]
        grid = image_to_embeddings(msg)
        assert msg.encoding == "16FC32" and grid.dtype == np.float16 and grid.shape == (12, 16, 32)
        assert msg.header.stamp.sec == 5
        np.testing.assert_allclose(np.linalg.norm(grid.astype(np.float32), axis=-1), 1.0, atol=5e-3)
        assert depth_stride((96, 128), grid.shape[:2], 0.0) == pytest.approx(8.0)

        instruction.publish(String(data="the red square"))
        def localized() -> dict | None:
            return next((d for d in map(json.loads, (m.data for m in probe.messages["/find_perception/results"]))
                         if d["type"] == "localization" and d["instruction_text"] == "the red square"
                         and d["frame"]["stamp"] == 5.0), None)
        doc = probe.wait_for(localized, "the localization result")
        check_result(doc)
        assert doc["embeddings"] == {"encoding": "16FC32", "dims": 32, "source_dims": 32, "width": 16, "height": 12,
                                     "stride": 8.0, "projection_seed": None}
        assert doc["timings_ms"]["embed_pixels"] > 0
    finally:
        probe.close()
        stop_all([node])
