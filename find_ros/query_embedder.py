"""find_field's queries (no rclpy): FindPipeline's text / instruction / image embeddings in the space
of the map, that is projected as find_perception projects its ``~/embeddings``
(:class:`ProjectedEmbedder`), and a parsed ``~/query`` turned into a :class:`FieldQuery` of the map's
width (:func:`field_query`)."""
from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from find_core.field import FieldQuery, query_from_pipeline
from find_core.instructions import InstructionError

from .answer_schema import QueryError, QuerySpec
from .startup import StartupError, embedding_projection, load_model


class ProjectedEmbedder:
    """FindPipeline's query embeddings, projected like find_perception's ~/embeddings (``e @ P``),
    with a small cache for repeated texts (the negatives are embedded with every query)."""

    def __init__(self, pipeline: Any, projection: np.ndarray | None, width: int) -> None:
        self.pipeline, self.projection = pipeline, projection
        self.width = int(projection.shape[1]) if projection is not None else width   # of the query vectors
        self._texts: dict[str, np.ndarray] = {}

    def _project(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x if self.projection is None else x @ self.projection

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if missing:
            if len(self._texts) > 256:
                self._texts.clear()
            self._texts.update(zip(missing, self._project(self.pipeline.embed_text(missing))))
        return np.stack([self._texts[t] for t in texts])

    def embed_instruction(self, instruction: Any) -> np.ndarray:
        return self._project(self.pipeline.embed_instruction(instruction))

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._project(self.pipeline.embed_images(images))


def load_query_embedder(p: Any, log: Any) -> ProjectedEmbedder | None:
    """find_field's query model (FieldParams ``p``: the perception node's model parameters, so the
    same model), loaded once; its (projected) embeddings of the negatives warm it up. None without a
    model (embedding queries only)."""
    if not p.model_preset and not p.checkpoint:
        log.info("no model (model_preset and checkpoint empty): embedding queries only")
        return None
    started = time.perf_counter()
    log.info(f"loading the query model {p.model_preset!r} checkpoint={p.checkpoint or '-'} on {p.device}")
    pipeline = load_model(p, log.warning)
    try:
        width = int(pipeline.embed_text(["object"]).shape[1])
    except Exception as err:  # noqa: BLE001 -- one clear line, whatever the model raised
        raise StartupError(f"the model fails to embed a query: {type(err).__name__}: {err}") from None
    projection = embedding_projection(width, p.embeddings.dims, p.embeddings.projection_seed)
    embedder = ProjectedEmbedder(pipeline, projection, width)
    embedder.embed_text([n for n in p.query.negatives if n.strip()])
    log.info(f"query model {p.model_preset!r} checkpoint={p.checkpoint or '-'} ready in "
             f"{time.perf_counter() - started:.1f} s; query width {embedder.width}"
             + (f" (projected from {width}, seed {p.embeddings.projection_seed})" if projection is not None else ""))
    return embedder


def field_query(spec: QuerySpec, dim: int, embedder: ProjectedEmbedder | None, negatives: list[str],
                temperature: float, dims_param: int, log_error: Callable[[str], object]) -> FieldQuery:
    """The query for a map of ``dim``-wide features: a raw embedding as given (the default
    ``negatives`` embedded when it brings none), text and instructions embedded by ``embedder``.
    A QueryError names what does not fit (``dims_param``: the node's embeddings.dims, for the
    message); a model failure is logged with its traceback through ``log_error``."""
    if spec.kind == "embedding":
        if len(spec.embedding) != dim:
            raise QueryError("dim_mismatch", f"the embedding has {len(spec.embedding)} values, the map's "
                                             f"features have {dim}", "embedding")
        negative_embeddings = spec.negatives
        if negative_embeddings is None:
            if embedder is None:
                raise QueryError("no_model", "no model is loaded to embed the default negatives: give "
                                             "'negatives'", "negatives")
            negative_embeddings = embedder.embed_text(negatives)
        if negative_embeddings.shape[1] != dim:
            raise QueryError("dim_mismatch", f"the negatives have {negative_embeddings.shape[1]} values, the map's "
                                             f"features have {dim}", "negatives")
        return FieldQuery(spec.embedding, negative_embeddings, spec.text, temperature)
    if embedder is None:
        raise QueryError("no_model", "text and instruction queries need a model (model_preset/checkpoint)")
    try:
        if spec.kind == "text":
            query = query_from_pipeline(embedder, text=spec.text, negatives=negatives, temperature=temperature)
        else:
            query = query_from_pipeline(embedder, instruction=spec.instruction, negatives=negatives,
                                        temperature=temperature)
    except InstructionError as err:
        raise QueryError("invalid_query", err.message, err.field or None) from None
    except Exception as err:
        log_error(f"model error: {err}\n{traceback.format_exc()}")
        raise QueryError("model_error", f"{type(err).__name__}: {err}") from None
    if query.dim != dim:
        raise QueryError("dim_mismatch", f"query embeddings have {query.dim} values (embeddings.dims={dims_param}), "
                                         f"the map's features have {dim}: set embeddings.dims and "
                                         "projection_seed to the perception node's")
    return query
