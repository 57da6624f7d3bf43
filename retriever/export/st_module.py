"""The sentence-transformers module of an exported index encoder
(:mod:`retriever.export.st_folder`).

sentence-transformers' own modules cannot encode as an index does: its prompts only go in
front of the text (PromptEOL wraps it, Echo repeats it), it cuts a long input's tail with
the prompt's end (the encoder keeps the text's head and tail inside the whole prompt), and
its pooling cannot read the second copy of an Echo input alone. So this one module does
it all with retriever's own code: ``preprocess`` is :class:`Encoder`'s prompting and
truncation, ``forward`` its forward pass and pooling followed by :class:`EmbedFilter`.

sentence-transformers' prompt takes the place of the index's instruction (in front of the
prompt template, never truncated): the export saves the query and document instructions
as its ``query`` and ``document`` prompts, so ``encode_query``/``encode_document`` pass
them here. Needs sentence-transformers >= 6.2 (``preprocess`` receives the prompt).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from retriever.core.errors import RetrieverError
from retriever.core.spec import EncoderConfig
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.export.st_folder import EXPORT_CONFIG, FILTER_DIR, MODEL_DIR, read_export_settings

try:
    from sentence_transformers.base.modules import InputModule
except ImportError:  # sentence-transformers missing, or older than 6
    raise RetrieverError(
        "an exported retriever encoder needs sentence-transformers>=6.2: "
        "pip install 'sentence-transformers>=6.2'"
    ) from None


class RetrieverEncoder(InputModule):
    """Text -> the index's unit vector: prompt, truncation, pooling and filter as built."""

    config_file_name = EXPORT_CONFIG
    save_in_root = True

    def __init__(
        self,
        encoder: Encoder,
        embed_filter: EmbedFilter,
        settings: dict[str, Any],
        source: Path | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.embed_filter = embed_filter
        self.settings = settings
        self.source = source
        # A submodule, so that sentence-transformers' .to(device) moves the weights.
        self.model = encoder.model
        self.tokenizer = encoder.tokenizer

    @classmethod
    def from_folder(cls, folder: Path) -> RetrieverEncoder:
        """Load an export: the model on the CPU in the index's dtype (sentence-transformers
        then moves it to its device), its weights' hash checked before they are loaded."""
        settings = read_export_settings(folder)
        encoder = Encoder.load(
            str(folder / MODEL_DIR),
            EncoderConfig.from_dict(settings["encoder"]),
            dtype=settings["dtype"],
            device="cpu",
            expected_weights_sha256=settings["model"]["weights_sha256"],
            expected_by=str(folder),
        )
        embed_filter = EmbedFilter.load(folder / FILTER_DIR)
        if embed_filter.model_dim != encoder.hidden_size:
            raise RetrieverError(
                f"{folder} is inconsistent: its filter reads {embed_filter.model_dim} "
                f"dimensions, its model has {encoder.hidden_size}; export the index again"
            )
        return cls(encoder, embed_filter, settings, folder)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> RetrieverEncoder:
        """sentence-transformers' entry point; ``model_kwargs`` and the like are not used:
        the index's settings decide how text is encoded."""
        folder = cls.load_dir_path(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        if folder is None:
            raise RetrieverError(f"cannot find the exported encoder {model_name_or_path!r}")
        return cls.from_folder(Path(folder))

    @property
    def max_seq_length(self) -> int:
        """Tokens per input, prompt included (longer texts keep their head and tail)."""
        return self.encoder.config.max_length

    def get_embedding_dimension(self) -> int:
        return self.embed_filter.dim

    def get_config_dict(self) -> dict[str, Any]:
        return {**self.settings["encoder"], "dtype": self.settings["dtype"]}

    def preprocess(
        self,
        inputs: Sequence[Any],
        prompt: str | None = None,
        task: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The encoder's token ids of each prompted, truncated text. ``prompt`` is the
        instruction; without one, ``task`` picks the index's (``query``, else documents)."""
        texts = list(inputs)
        # RetrieverError, never TypeError: sentence-transformers retries a preprocess that
        # raises TypeError with the prompt glued to the text, which would encode other ids.
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                kind = type(text).__name__
                raise RetrieverError(f"this model encodes text; input {position} is a {kind}")
            if not text.strip():
                # As the index: an empty document is never encoded, an empty query refused.
                raise RetrieverError(f"input {position} is empty: give some text to encode")
        if prompt is None:
            config = self.encoder.config
            prompt = config.query_instruction if task == "query" else config.document_instruction
        return {"prepared": self.encoder._prepare(texts, prompt)}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Pool the batch as the encoder does, then filter and normalise as the index did."""
        device = next(self.model.parameters()).device
        # The encoder places each batch on its device: follow wherever the weights went.
        self.encoder.device = device
        pooling = self.encoder.config.pooling
        batch = features["prepared"]
        pooled = self.encoder._pool_batch(self.model.base_model, batch, (pooling,))[pooling]
        # EmbedFilter's own numpy transform: the very arithmetic that made the index's vectors.
        vectors = self.embed_filter.transform(pooled.cpu().numpy())
        features["sentence_embedding"] = torch.from_numpy(vectors).to(device)
        return features

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Copy the export's files (weights unchanged) into ``output_path``."""
        if self.source is None:
            raise RetrieverError("this encoder was not loaded from an export: nothing to copy")
        target = Path(output_path)
        if target.resolve() == self.source.resolve():
            return
        for part in (MODEL_DIR, FILTER_DIR):
            shutil.copytree(self.source / part, target / part, dirs_exist_ok=True)
        shutil.copyfile(self.source / EXPORT_CONFIG, target / EXPORT_CONFIG)
