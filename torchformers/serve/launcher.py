"""`run_mode: serve` and `run_mode: chat`: the predict YAML's model and tokenizer on the engine, behind the
OpenAI API (uvicorn) or in a terminal chat.

The model is built as predict builds it (checkpoint, quantization_config, LoRA / S-LoRA `pet_config`); the
YAML's `serve:` section holds the server's settings, and `model.model_config` the generation defaults
(max_new_tokens, do_sample and its temperature / top_k / top_p, repetition_penalty).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path

from torchformers.errors import ConfigError
from torchformers.generation.engine import AsyncLLMEngine, LLMEngine
from torchformers.pet import PREFIX_PET_TYPES
from torchformers.serve.app import ServeSettings, build_app
from torchformers.tools.logger import logger
from torchformers.tools.register.build import build_trainer

__all__ = ["API_KEY_ENV", "build_engine", "chat_from_config", "serve_from_config", "serve_settings"]

API_KEY_ENV = "TORCHFORMERS_API_KEY"
SERVE_KEYS = (
    "host",
    "port",
    "api_key",
    "served_model_name",
    "max_num_seqs",
    "max_num_batched_tokens",
    "block_size",
    "num_blocks",
    "max_model_len",
    "enable_prefix_caching",
    "max_queue",
    "max_n",
)


def _positive(section: Mapping, key: str, source, allow_none: bool = False, minimum: int = 1):
    value = section.get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{source}: serve.{key} is {value!r}; expected an integer >= {minimum}" + (" or null" if allow_none else "")
        )
    return value


def serve_settings(config) -> ServeSettings:
    """The `serve:` section (defaults for the keys it leaves out) and the model's generation defaults."""
    source = config.get("source_file") or "the config"
    section = config.get("serve") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: 'serve' must be a mapping, got {section!r}")
    unknown = [k for k in section if k not in SERVE_KEYS]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key 'serve.{unknown[0]}' (valid keys of 'serve': {', '.join(SERVE_KEYS)})"
        )
    defaults = ServeSettings()
    get = lambda key: section.get(key) if section.get(key) is not None else getattr(defaults, key)  # noqa: E731
    name = section.get("served_model_name")
    if not name:
        trainer = config.get("trainer")
        name = (trainer.get("model_name") if isinstance(trainer, Mapping) else None) or (
            Path(str(config.get("source_file"))).stem if config.get("source_file") else "model"
        )
    api_key = os.environ.get(API_KEY_ENV) or section.get("api_key") or None
    mc = config.get_value("model.model_config") or {}
    port = section.get("port", defaults.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{source}: serve.port is {port!r}; expected an integer in 0..65535")
    enable = get("enable_prefix_caching")
    if not isinstance(enable, bool):
        raise ConfigError(f"{source}: serve.enable_prefix_caching is {enable!r}; expected true or false")
    return ServeSettings(
        host=str(get("host")),
        port=port,
        api_key=str(api_key) if api_key else None,
        served_model_name=str(name),
        max_num_seqs=_positive({**vars(defaults), **section}, "max_num_seqs", source),
        max_num_batched_tokens=_positive({**vars(defaults), **section}, "max_num_batched_tokens", source),
        block_size=_positive({**vars(defaults), **section}, "block_size", source),
        num_blocks=_positive(section, "num_blocks", source, allow_none=True),
        max_model_len=_positive(section, "max_model_len", source, allow_none=True),
        enable_prefix_caching=enable,
        max_queue=_positive({**vars(defaults), **section}, "max_queue", source, minimum=1),
        max_n=_positive({**vars(defaults), **section}, "max_n", source),
        default_max_tokens=mc.get("max_new_tokens") or None,
        do_sample=str(mc.get("do_sample", False)).lower() == "true",
        temperature=float(mc.get("temperature", 1.0) or 1.0),
        top_k=int(mc.get("top_k", 0) or 0),
        top_p=float(mc.get("top_p", 1.0) or 1.0),
        repetition_penalty=float(mc.get("repetition_penalty", 1.0) or 1.0),
    )


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for source in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(getattr(model, "config", None), "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _generation_defaults(settings: ServeSettings, gc) -> None:
    """The defaults predict generates with: the model's generation config (the YAML's model_config over the
    config class's defaults, e.g. do_sample True and top_k 5 when the YAML leaves them out)."""
    if gc is None:
        return
    settings.default_max_tokens = getattr(gc, "max_new_tokens", None) or None
    settings.do_sample = bool(getattr(gc, "do_sample", False))
    settings.temperature = float(getattr(gc, "temperature", 1.0) or 1.0)
    settings.top_k = int(getattr(gc, "top_k", 0) or 0)
    settings.top_p = float(getattr(gc, "top_p", 1.0) or 1.0)
    settings.repetition_penalty = float(getattr(gc, "repetition_penalty", 1.0) or 1.0)


def build_engine(config, settings: ServeSettings | None = None):
    """The model and tokenizer as predict builds them, on an `LLMEngine`; returns (engine, tokenizer, settings)."""
    settings = settings or serve_settings(config)
    if not isinstance(config.get("trainer"), Mapping) or "type" not in config.trainer:
        raise ConfigError(
            f"{config.source_file}: the config needs a 'trainer' section with a 'type' "
            "(e.g. CausalLanguageModelingTrainer)"
        )
    pet_config = config.get_value("model.model_config.pet_config")
    pet_type = pet_config.get("pet_type") if isinstance(pet_config, Mapping) else None
    if pet_type in PREFIX_PET_TYPES:
        raise ConfigError(
            f"{config.source_file}: model.model_config.pet_config.pet_type is {pet_type!r}; the server's paged KV "
            "cache has no room for learned prefixes, so prefix-tuned models are served only after predict "
            "(run_mode predict) or with LoRA (pet_type lora)"
        )
    trainer = build_trainer(config.trainer)
    run_mode = config.run_mode
    config.run_mode = "predict"  # the network and tokenizer are exactly predict's
    try:
        tokenizer = trainer.build_tokenizer(config)
        model = trainer._build_predict_network(config)
    finally:
        config.run_mode = run_mode
    model.eval()
    _generation_defaults(settings, getattr(model, "generation_config", None))
    engine = LLMEngine(
        model,
        eos_token_ids=_eos_ids(model, tokenizer),
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        block_size=settings.block_size,
        num_blocks=settings.num_blocks,
        max_model_len=settings.max_model_len,
        enable_prefix_caching=settings.enable_prefix_caching,
    )
    return engine, tokenizer, settings


def _uvicorn_server(app, host: str, port: int):
    """A uvicorn server that stops on SIGINT / SIGTERM and returns (uvicorn re-raises the signal once it has
    shut down, which would end the launcher with a traceback)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    return Server(config)


def serve_from_config(config) -> None:
    """Build the engine and serve the OpenAI API with uvicorn until SIGINT / SIGTERM."""
    engine, tokenizer, settings = build_engine(config)
    async_engine = AsyncLLMEngine(engine)
    app = build_app(async_engine, tokenizer, settings)
    server = _uvicorn_server(app, settings.host, settings.port)

    async def announce():
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
        logger.info(
            "serving %s at http://%s:%d/v1 (OpenAI API; /health, /metrics%s)",
            settings.served_model_name,
            settings.host,
            port,
            "; API key required" if settings.api_key else "",
        )

    async def main():
        task = asyncio.create_task(announce())
        try:
            await server.serve()
        finally:
            task.cancel()

    try:
        asyncio.run(main())
    finally:
        async_engine.shutdown()
    logger.info("server stopped")


def chat_from_config(config, stdin=None, stdout=None) -> None:
    """A terminal chat on the engine (see `torchformers.serve.chat`)."""
    from torchformers.serve.chat import chat_loop

    engine, tokenizer, settings = build_engine(config)
    chat_loop(engine, tokenizer, settings, stdin=stdin, stdout=stdout)
