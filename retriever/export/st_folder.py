"""Write an index's encoder as a sentence-transformers model folder (``retriever export``).

The folder holds data only: the model's files, the filter and the settings the index was
built with. Its one module is :class:`retriever.st_module.RetrieverEncoder`, imported
from the installed package, which encodes with retriever's own :class:`Encoder` and
:class:`EmbedFilter`, so ``encode_query``/``encode_document`` give the index's vectors.
Nothing in the folder is code, and nothing in it is run.
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from retriever import __version__
from retriever.core.errors import RetrieverError
from retriever.core.generations import ReaderHold, refuse_inside_index
from retriever.core.spec import EncoderConfig
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.models import (
    MODEL_FILE_PATTERNS,
    ResolvedModel,
    configured_hidden_size,
    resolve_model,
    weight_files,
    weights_sha256,
)
from retriever.index.manifest import Manifest, read_manifest

EXPORT_FORMAT = "retriever-st-export"
EXPORT_VERSION = 1
# The module's settings: not config.json, which is the transformers model's name.
EXPORT_CONFIG = "retriever_encoder.json"
MODEL_DIR = "model"
FILTER_DIR = "filter"
# Three dotted parts: transformers' loader of repository code reads a reference of
# exactly two ("file.Class") from the folder; this one it cannot, so sentence-transformers
# imports the installed package.
MODULE_CLASS = "retriever.st_module.RetrieverEncoder"


def export_index(
    index: str | Path, out: str | Path, *, model: str | None = None, overwrite: bool = False
) -> Path:
    """Write ``out``, a folder that ``SentenceTransformer(out, trust_remote_code=True)``
    loads, encoding like the dense index ``index``; returns ``out``.

    ``model`` overrides where the index's model is found (its weights must hash to the
    manifest's). ``overwrite`` replaces an earlier export at ``out``, never anything else.
    The folder is written beside ``out`` and renamed into place when complete.
    """
    out = Path(out).expanduser()
    _check_out(out, overwrite)
    folder, hold = ReaderHold.resolve(Path(index).expanduser())
    try:
        manifest = read_manifest(folder)
        if manifest.spec.dense is None:
            raise RetrieverError(
                f"{index} holds no dense index (it was built with --no-dense): only a dense "
                "index's encoder can be exported"
            )
        embed_filter = EmbedFilter.load(folder)
        resolved = _resolve_index_model(folder, manifest, model, embed_filter)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
        try:
            # The path as given (a link to the current generation), not the generation.
            source = Path(index).expanduser().absolute()
            _write_export(staging, source, manifest, resolved, embed_filter)
            _publish(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        hold.release()
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out``, unless ``overwrite`` and it is an earlier export, and
    any ``out`` inside an index's generations."""
    refuse_inside_index(out, "OUT")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise RetrieverError(f"{out} exists; pass --overwrite to replace an earlier export")
    if not (out / EXPORT_CONFIG).is_file() or out.is_symlink():
        # --overwrite deletes the folder: only one this command wrote is fair game.
        raise RetrieverError(
            f"{out} exists and is not a retriever export (no {EXPORT_CONFIG}); choose another OUT"
        )


def _resolve_index_model(
    folder: Path, manifest: Manifest, model: str | None, embed_filter: EmbedFilter
) -> ResolvedModel:
    """The index's model folder, found as the searcher finds it, its weights checked
    against the manifest and its width against the filter (nothing is loaded)."""
    built_with = manifest.spec.model
    resolved = resolve_model(
        model or built_with.name, built_with.revision if model is None else None
    )
    _refuse_other_weights(resolved)
    if resolved.weights_sha256 != manifest.weights_sha256:
        raise RetrieverError(
            f"{folder} was built with weights sha256 {manifest.weights_sha256[:12]}..., "
            f"but {resolved.name!r} has weights {resolved.weights_sha256[:12]}...: give the "
            "model that built the index (--model PATH to a copy of it)"
        )
    widths = {
        "filter": embed_filter.model_dim,
        "manifest": manifest.model_dim,
        "model": configured_hidden_size(resolved) or embed_filter.model_dim,
    }
    if len(set(widths.values())) > 1 or embed_filter.dim != manifest.dim:
        found = ", ".join(f"the {name} {width}" for name, width in widths.items())
        raise RetrieverError(
            f"{folder} is inconsistent: hidden sizes or dimensions differ ({found})"
        )
    return resolved


def _refuse_other_weights(resolved: ResolvedModel) -> None:
    """An export copies safetensors weights only, as a search loads only them. The
    index's weights hash covers every weight file of the folder, so a folder holding
    others (pickle files such as pytorch_model.bin) cannot be exported as it is."""
    others = [p.name for p in weight_files(resolved.path) if p.suffix != ".safetensors"]
    if others:
        raise RetrieverError(
            f"cannot export model {resolved.name!r} from {resolved.path}: it holds "
            f"{', '.join(others)}; an export copies safetensors weights only, never pickle "
            "files (give --model a copy of the folder without them)"
        )


def _write_export(
    staging: Path,
    source: Path,
    manifest: Manifest,
    resolved: ResolvedModel,
    embed_filter: EmbedFilter,
) -> None:
    staging.mkdir()
    _copy_model(resolved, staging / MODEL_DIR)
    copied = weights_sha256(staging / MODEL_DIR)
    if copied != manifest.weights_sha256:
        raise RetrieverError(
            f"the weights of {resolved.path} changed while they were copied (sha256 "
            f"{copied[:12]}...); nothing was written, run the export again"
        )
    embed_filter.save(staging / FILTER_DIR)
    settings = export_settings(source, manifest, embed_filter)
    _write_json(staging / EXPORT_CONFIG, settings)
    _write_json(
        staging / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": MODULE_CLASS}]
    )
    _write_json(staging / "config_sentence_transformers.json", _st_config(settings))
    (staging / "README.md").write_text(_readme(settings), encoding="utf-8")


def _copy_model(resolved: ResolvedModel, target: Path) -> None:
    """The model folder's safetensors weights, configs and tokenizer files
    (:data:`MODEL_FILE_PATTERNS`): the export holds no code and no pickle. Links (a hub
    snapshot's) are copied as their content."""
    target.mkdir()
    for path in sorted(resolved.path.iterdir()):
        wanted = any(fnmatch.fnmatch(path.name, pattern) for pattern in MODEL_FILE_PATTERNS)
        if wanted and path.is_file() and not path.name.startswith("."):
            shutil.copyfile(path, target / path.name)


def export_settings(source: Path, manifest: Manifest, embed_filter: EmbedFilter) -> dict[str, Any]:
    """What the module needs to encode as the index did, and where it came from."""
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "retriever_version": __version__,
        "encoder": manifest.spec.encoder.to_dict(),
        "dtype": manifest.model["dtype"],
        "model": {**manifest.model_identity, "hidden_size": embed_filter.model_dim},
        "filter": {"name": embed_filter.name, "dim": embed_filter.dim},
        "index": {
            "path": str(source),
            "documents": manifest.count,
            "content_sha256": manifest.content_sha256,
        },
    }


def read_export_settings(folder: Path) -> dict[str, Any]:
    """An export's settings, checked before anything is loaded (one line if not)."""
    path = folder / EXPORT_CONFIG
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RetrieverError(
            f"{folder} is not a retriever export (no {EXPORT_CONFIG}); write one with "
            "`retriever export INDEX OUT`"
        ) from None
    except (OSError, ValueError) as exc:
        raise RetrieverError(f"cannot read {path}: {exc}") from None
    if not isinstance(settings, dict) or settings.get("format") != EXPORT_FORMAT:
        raise RetrieverError(f"{path} is not a retriever export's settings")
    if settings.get("version") != EXPORT_VERSION:
        raise RetrieverError(
            f"{folder} was written as export version {settings.get('version')}, this "
            f"retriever reads version {EXPORT_VERSION}: export the index again"
        )
    try:
        EncoderConfig.from_dict(settings["encoder"])
        _ = settings["dtype"], settings["model"]["weights_sha256"]
    except (KeyError, TypeError) as exc:
        raise RetrieverError(f"{path} is damaged (no {exc}); export the index again") from None
    return settings


def _st_config(settings: dict[str, Any]) -> dict[str, Any]:
    """config_sentence_transformers.json: the index's instructions as the query and
    document prompts (the module puts a prompt where the index put its instruction), unit
    vectors compared by cosine, and the package the module comes from."""
    encoder = settings["encoder"]
    return {
        "model_type": "SentenceTransformer",
        "__version__": {"retriever": __version__},
        "requirements": {
            "retriever": {
                "specifier": f">={__version__}",
                "reason": f"this model's one module is {MODULE_CLASS}",
            }
        },
        "prompts": {
            "query": encoder["query_instruction"],
            "document": encoder["document_instruction"],
        },
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }


def _readme(settings: dict[str, Any]) -> str:
    encoder, model, index = settings["encoder"], settings["model"], settings["index"]
    return f"""---
library_name: sentence-transformers
tags:
- sentence-transformers
- retriever
---

# The encoder of a retriever index

Exported by `retriever export` (retriever {settings["retriever_version"]}) from the index
`{index["path"]}` ({index["documents"]} documents). `encode_query` and `encode_document`
give that index's vectors: the same weights, prompt, truncation, pooling and filter.

- model: `{model["name"]}` (weights sha256 `{model["weights_sha256"][:16]}...`), {settings["dtype"]}
- prompt: {encoder["prompt"]}; pooling: {encoder["pooling"]}; max length: {encoder["max_length"]}
  tokens (a long text keeps its head and tail; the prompt always survives)
- query instruction: {json.dumps(encoder["query_instruction"])}; document instruction:
  {json.dumps(encoder["document_instruction"])} (saved as the `query` and `document` prompts)
- filter: {settings["filter"]["name"]}, {model["hidden_size"]} -> {settings["filter"]["dim"]}
  dimensions; every vector has unit length (cosine = dot product)

The folder holds no code. Its one module, `{MODULE_CLASS}`, comes from the installed
`retriever` package (`pip install` this project, with sentence-transformers >= 6.2).
sentence-transformers 6 imports a module class from outside its own package only with
`trust_remote_code=True`; here that lets it import the installed `retriever` package,
and nothing from this folder:

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder", trust_remote_code=True)
queries = model.encode_query(["vitamin D and bone density"])
documents = model.encode_document(["Vitamin D deficiency is associated with bone disease."])
print(model.similarity(queries, documents))
```

MTEB (mteb >= 2.0): `mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))`.
"""


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _publish(staging: Path, out: Path) -> None:
    """Rename the complete folder to ``out``; an earlier export is moved aside first and
    removed once the new one is in place."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)  # the earlier export stays as it was
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
