"""Decoder-only transformer language models from Hugging Face ``transformers``:
``model=hf_causal_lm model.arch=llama|gpt2|qwen2|mistral|...``, built from a config (no weights
downloaded; tiny by default, every size overridable), or from a local checkpoint folder
(``model.pretrained=PATH``, what ``save_pretrained`` writes).

The network reads token ids (N, T) and returns next-token logits (N, T, V); a floating input is
taken as the embeddings (N, T, D), which is what SynFlow's all-ones input means here: ones into
the first decoder layer, after the embedding (docs/design.md §3). Its blocks are the decoder
layers, each removable (the residual stream keeps its shape); removing some builds a new model
whose config has fewer layers and copies every kept weight, so a ticket is an ordinary
``transformers`` model (``model.lm.save_pretrained(DIR)``; ``AutoModelForCausalLM.from_pretrained``
loads it) and its record rebuilds it for ``lottery.load_ticket``. Only causal models pass the door:
what an architecture reads is probed, not assumed from its name (transformers builds BERT and the
other encoders of its causal-LM mapping with bidirectional attention unless told ``is_decoder``).
transformers is imported when a language model is first built, not by every process.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from lottery.config import ModelConfig, opt
from lottery.errors import LotteryError, one_line
from lottery.files import sha256_file
from lottery.networks.base import FAMILIES, Family


@dataclass
class CausalLMSettings(ModelConfig):
    arch: Optional[str] = opt(None, "a transformers model type with a causal-LM head, e.g. llama, gpt2, qwen2, "
                                    "mistral (conf/model/hf_causal_lm.yaml: llama)")
    layers: int = opt(6, "decoder layers")
    width: int = opt(256, "hidden size (the residual stream)")
    heads: int = opt(4, "attention heads")
    mlp: Optional[int] = opt(None, "the MLP's inner size (None: 4 x width)")
    max_positions: int = opt(1024, "the position limit (max_position_embeddings); the data's sequence length must fit")
    kwargs: Dict[str, Any] = opt(help="further arguments of the transformers config (e.g. rope_theta, "
                                      "tie_word_embeddings), added with ++model.kwargs.NAME=VALUE", factory=dict)
    pretrained: Optional[str] = opt(None, "a local checkpoint folder (save_pretrained's) to start from: its config "
                                          "fixes the architecture; nothing is ever downloaded")


class CausalLM(nn.Module):
    """A transformers causal LM as lottery trains it: token ids (N, T) -> logits (N, T, V); a
    floating input (N, T, D) is taken as the embeddings."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        given = {"inputs_embeds" if x.is_floating_point() else "input_ids": x}
        if x.device.type == "meta":  # a skeleton's probe: the causal mask given whole, as transformers reads
            # the mask it would build from the positions' values, which a meta tensor does not have
            t = x.shape[1]
            given["attention_mask"] = torch.ones(x.shape[0], 1, t, t, dtype=torch.bool, device=x.device).tril()
        return self.lm(**given, use_cache=False).logits


def _transformers():
    import transformers

    transformers.logging.set_verbosity_error()  # no advice on generation or weights for random initialisations
    transformers.logging.disable_progress_bar()
    return transformers


@functools.cache
def causal_types() -> frozenset[str]:
    """The model types transformers can build with a causal-LM head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


# Where a config says how a layer behaves by its index, removing layers would change what the
# kept ones compute: such configs are refused (per-layer lists are cut alike instead).
BY_INDEX = {"scale_attn_by_inverse_layer_idx": "GPT-2 scales attention by the layer's index",
            "use_sliding_window": "sliding-window attention is chosen per layer index",
            "mlp_only_layers": "the MLP kind is chosen per layer index",
            "first_k_dense_replace": "the MLP kind is chosen per layer index"}


def _config_of(cfg: CausalLMSettings, shape) -> dict:
    """The transformers config (as a dict) of a model config at the data's vocabulary: no
    dropout (a resumed or replayed training must see what an uninterrupted one saw; ``model.kwargs``
    may set it), fp32 weights whatever a checkpoint was saved in."""
    t = _transformers()
    if cfg.pretrained:
        try:
            config = t.AutoConfig.from_pretrained(str(Path(cfg.pretrained).expanduser()), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - an unknown model type, unreadable JSON
            raise LotteryError(f"model.pretrained={cfg.pretrained}: its config.json cannot be read by transformers "
                               f"({one_line(e)[:160]})") from None
        return config.to_dict()
    sizes = {"vocab_size": shape.classes, "hidden_size": cfg.width, "num_hidden_layers": cfg.layers,
             "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.heads, "head_dim": cfg.width // cfg.heads,
             "intermediate_size": cfg.mlp or 4 * cfg.width, "max_position_embeddings": cfg.max_positions,
             "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    given = OmegaConf.to_container(cfg.kwargs, resolve=True)
    try:
        config = t.AutoConfig.for_model(cfg.arch, **{**sizes, **given})
    except Exception as e:  # noqa: BLE001 - transformers validates a config in many ways
        raise LotteryError(f"transformers rejects a {cfg.arch} config of these sizes and model.kwargs "
                           f"({one_line(e)[:160]})") from None
    if cfg.arch == "gpt2":  # GPT-2's config names the MLP's inner size n_inner
        config.n_inner = cfg.mlp or 4 * cfg.width
    out = config.to_dict()
    out.update({k: 0.0 for k, v in out.items() if (k.endswith("dropout") or k.endswith("pdrop"))
                and isinstance(v, float) and k not in given})
    return out


def _config(arch: dict):
    t = _transformers()
    drop = ("transformers_version", "architectures", "dtype", "torch_dtype")  # weights are fp32: SGD's updates
    kept = {k: v for k, v in arch["config"].items() if k not in drop}
    config = t.AutoConfig.for_model(kept.pop("model_type"), **kept)
    config._attn_implementation = "sdpa"
    return config


def decoder_layers(lm: nn.Module) -> str:
    """The module path of the decoder layers (the ModuleList of num_hidden_layers layers)."""
    n = lm.config.get_text_config().num_hidden_layers
    for name, m in lm.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n and n > 0 and len({type(b) for b in m}) == 1:
            return name
    raise LotteryError(f"{type(lm).__name__} has no list of {n} decoder layers: lottery removes a decoder's layers")


LAYER_COUNT = ("num_hidden_layers", "n_layer")


PROBE_TOKENS = 16  # the causality probe's sequence length (cut to the position limit)
_READS_AHEAD: dict[str, bool] = {}  # per config, vocabulary and length: validation probes a sweep's model once


def _distinct_layers(config: dict) -> dict:
    """The config with only the first decoder layer of each kind (by its per-layer list entries):
    what a layer reads is the same with fewer of its kind, and a large checkpoint's probe stays small."""
    n = next((config[k] for k in LAYER_COUNT if k in config), None)
    if not n:
        return config
    lists = [v for k, v in config.items() if isinstance(v, list) and len(v) == n and k != "architectures"]
    first = {json.dumps([v[i] for v in lists], default=str): i for i in reversed(range(n))}  # the lowest index wins
    return _layer_types_kept(config, sorted(first.values()))


def _layer_types_kept(config: dict, kept: list[int]) -> dict:
    """The config with ``kept`` layers: the layer count and every per-layer list cut alike."""
    out = copy.deepcopy(config)
    names = [k for k in LAYER_COUNT if k in out]  # GPT-2 names it n_layer
    if not names:
        raise LotteryError(f"a {config.get('model_type')} config keeps its layer count elsewhere (a nested text "
                           "config): lottery removes the layers of a decoder-only config")
    n = out[names[0]]
    for key, value in config.items():
        if isinstance(value, list) and len(value) == n and key != "architectures":
            out[key] = [value[i] for i in kept]
    out.update({k: len(kept) for k in names})
    return out


@FAMILIES.registered(CausalLMSettings)
class HFCausalLM(Family):
    name = "hf_causal_lm"
    reads = "tokens"

    def check(self, cfg: CausalLMSettings, shape):
        """The settings, then the transformers config they give (read once); that every decoder
        layer has one structure is checked where the layers are found (``candidates``)."""
        if cfg.pretrained:
            if not (Path(cfg.pretrained).expanduser() / "config.json").is_file():
                raise LotteryError(f"model.pretrained={cfg.pretrained} is not a transformers checkpoint folder (no "
                                   "config.json): give the folder save_pretrained wrote")
        else:
            if cfg.arch not in causal_types():
                close = difflib.get_close_matches(str(cfg.arch), sorted(causal_types()), n=5, cutoff=0.6)
                raise LotteryError(f"model.arch={cfg.arch} is not a transformers model type with a causal-LM head"
                                   + (f"; the closest: {', '.join(close)}" if close else ""))
            for key in ("layers", "width", "heads", "max_positions"):
                if getattr(cfg, key) < 1:
                    raise LotteryError(f"model.{key}={getattr(cfg, key)}: must be positive")
            if cfg.width % cfg.heads:
                raise LotteryError(f"model.width={cfg.width} is not a multiple of model.heads={cfg.heads}")
        config = _config_of(cfg, shape)
        if cfg.pretrained:
            if config.get("model_type") not in causal_types():
                raise LotteryError(f"model.pretrained={cfg.pretrained} holds a {config.get('model_type')} model, "
                                   "which has no causal-LM head in transformers")
            vocab = config.get("vocab_size")
            if not isinstance(vocab, int) or vocab < shape.classes:
                raise LotteryError(f"model.pretrained={cfg.pretrained} has {vocab} tokens, not at least the data's "
                                   f"{shape.classes} symbols (or a nested config lottery does not read)")
        limit = config.get("max_position_embeddings") or config.get("n_positions")  # GPT-2 names it n_positions
        if limit and shape.input[0] > limit:
            raise LotteryError(f"sequences of {shape.input[0]} tokens exceed the model's position limit of {limit}: "
                               "use a smaller data.seq_len" + ("" if cfg.pretrained else " or a larger "
                                                                                       "model.max_positions"))
        for key, why in BY_INDEX.items():
            if config.get(key):
                raise LotteryError(f"{self.label(cfg)}: {why} ({key}={config[key]}), so removing layers would change "
                                   f"what the kept ones compute: set ++model.kwargs.{key}=... off, or another arch")
        length = min(PROBE_TOKENS, limit or PROBE_TOKENS)
        if self._reads_ahead(cfg, config, shape.classes, length):
            raise LotteryError(self._not_causal(cfg, config, shape.classes, length))

    def _reads_ahead(self, cfg: CausalLMSettings, config: dict, classes: int, length: int) -> bool:
        """Whether a later token changes an earlier position's logits, so a next-token loss could be
        learnt by reading the answer. Row j of one batch changes token j of a seeded random sequence;
        the positions before j must keep row 0's logits (fp32, eval mode, its distinct layers only,
        to 1e-5 of the logits' scale). Torch's global RNG is left as it was."""
        key = json.dumps([config, classes, length], sort_keys=True, default=str)
        if key not in _READS_AHEAD:
            arch = {"arch": config.get("model_type"), "config": _distinct_layers(config), "input": [length],
                    "classes": classes, "removed": []}
            with torch.random.fork_rng(devices=[]), torch.device("cpu"), torch.no_grad():
                torch.manual_seed(0)
                net = self.construct(arch).eval()
                batch = torch.randint(0, classes, (length,)).repeat(length, 1)
                later = torch.arange(1, length)
                batch[later, later] = (batch[later, later] + 1) % classes
                try:
                    logits = net(batch)
                except Exception as e:  # noqa: BLE001 - a forward's own error, from settings it accepted
                    raise LotteryError(f"{self.label(cfg)} cannot be built and run on {length} tokens "
                                       f"({one_line(e)[:200]}): check the model's settings") from None
            tolerance = 1e-5 * max(1.0, float(logits.abs().max()))
            _READS_AHEAD[key] = any(float((logits[j, :j] - logits[0, :j]).abs().max()) > tolerance
                                    for j in range(1, length))
        return _READS_AHEAD[key]

    def _not_causal(self, cfg: CausalLMSettings, config: dict, classes: int, length: int) -> str:
        """The refusal of a model that reads later positions, naming the config's decoder switch
        where transformers has one and it makes the model causal."""
        who = (f"model.pretrained={cfg.pretrained} (a {config.get('model_type')} model)" if cfg.pretrained
               else f"model.arch={cfg.arch}")
        line = (f"{who} reads later positions (a later token changes an earlier position's logits: bidirectional "
                "attention): not a causal language model; ")
        switch = {**config, "is_decoder": True}
        if config.get("is_decoder") is False and not self._reads_ahead(cfg, switch, classes, length):
            return line + ("its config.json has is_decoder: set it true there" if cfg.pretrained else
                           "its transformers config has is_decoder (false unless given): set "
                           "++model.kwargs.is_decoder=true, or choose a decoder-only arch (llama, gpt2, qwen2, ...)")
        return line + "choose a decoder-only arch (llama, gpt2, qwen2, mistral, ...)"

    def build(self, cfg: CausalLMSettings, shape):
        arch = {"arch": cfg.arch, "config": _config_of(cfg, shape), "input": list(shape.input),
                "classes": shape.classes, "removed": []}
        net = self.construct(arch)
        if cfg.pretrained and next(net.parameters()).device.type != "meta":  # a skeleton holds no weights
            t = _transformers()
            try:
                loaded = t.AutoModelForCausalLM.from_pretrained(str(Path(cfg.pretrained).expanduser()),
                                                                local_files_only=True, dtype=torch.float32)
                net.lm.load_state_dict(loaded.state_dict())
            except Exception as e:  # noqa: BLE001 - a foreign or corrupt folder, weights of another shape
                raise LotteryError(f"model.pretrained={cfg.pretrained} cannot be loaded "
                                   f"({one_line(e)[:200]})") from None
        return net

    def construct(self, arch: dict) -> nn.Module:
        t = _transformers()
        try:
            lm = t.AutoModelForCausalLM.from_config(_config(arch), attn_implementation="sdpa")
        except Exception as e:  # noqa: BLE001 - a config transformers rejects
            raise LotteryError(f"transformers cannot build {arch['arch']} from this config ({one_line(e)}); check "
                               "model.kwargs") from None
        net = CausalLM(lm)
        net.lottery_arch = arch
        return net

    def content(self, cfg: CausalLMSettings) -> str | None:
        if not cfg.pretrained:
            return None
        folder = Path(cfg.pretrained).expanduser()
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        return ",".join(f"{p.name}:{sha256_file(p)}" for p in files)

    def label(self, cfg: CausalLMSettings) -> str:
        if cfg.name:
            return cfg.name
        if cfg.pretrained:
            return Path(cfg.pretrained).name
        return f"{cfg.arch}-{cfg.layers}x{cfg.width}"

    def candidates(self, model):
        """Every decoder layer, once all are known to share one structure (a layer removed must be
        like the others: its neighbours are renumbered into its place)."""
        path = decoder_layers(model.lm)
        layers = model.lm.get_submodule(path)
        shapes = [[(n, tuple(p.shape)) for n, p in layer.named_parameters()] for layer in layers]
        if any(s != shapes[0] for s in shapes):
            raise LotteryError(f"{model.lottery_arch['arch']}'s decoder layers differ in their weights (e.g. a mixture "
                               "of experts in some layers only): lottery removes layers of one structure")
        return [(f"lm.{path}.{i}", True) for i in range(len(layers))]

    def weight_types(self):
        from transformers.pytorch_utils import Conv1D  # GPT-2's projections

        return {Conv1D: ("weight",)}

    def without(self, model, paths):
        """A new model with a config of fewer layers, holding copies of every kept weight."""
        prefix = decoder_layers(model.lm)
        n = len(model.lm.get_submodule(prefix))
        gone = {int(p.rsplit(".", 1)[1]) for p in paths}
        kept = [i for i in range(n) if i not in gone]
        arch = model.lottery_arch
        dense_index = arch.get("kept", list(range(n)))  # a layer's index in the dense network
        new_arch = {**arch, "config": _layer_types_kept(arch["config"], kept), "kept": [dense_index[i] for i in kept],
                    "removed": sorted({*arch["removed"], *(dense_index[i] for i in gone)})}
        param = next(model.parameters())
        with torch.device(param.device):
            new = self.construct(new_arch)
        renumber = {old: new_i for new_i, old in enumerate(kept)}
        pattern = re.compile(rf"^lm\.{re.escape(prefix)}\.(\d+)\.")
        state = {}
        for key, value in model.state_dict().items():
            found = pattern.match(key)
            if found is None:
                state[key] = value
            elif int(found.group(1)) in renumber:
                state[f"lm.{prefix}.{renumber[int(found.group(1))]}.{key[found.end():]}"] = value
        new.load_state_dict(state)
        return new

    def record(self, model):
        return copy.deepcopy(model.lottery_arch)

    def rebuild(self, record):
        return self.construct(record)

    def ones_input(self, model, shape, dtype):
        """SynFlow's all-ones input: ones into the first decoder layer, after the embedding."""
        width = model.lm.config.get_text_config().hidden_size
        return torch.ones(1, *shape, width, dtype=dtype, device=next(model.parameters()).device)
