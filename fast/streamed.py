"""Phase II for models larger than host memory: weights read block by block, pruned blocks written out.

    weights = StreamedWeights(model_dir, dtype=torch.bfloat16)
    model = weights.skeleton()                      # the front (embeddings, norm, head) real, every block on meta
    compress(model, calibration, ..., stream=weights.into(out_dir))   # rac.fast.compress
    weights.finish(out_dir)                         # the blocks past the pruned scope, config, index

``skeleton`` builds the model on the meta device (no memory), then gives the modules outside the
decoder blocks real storage on the CPU and loads them from the safetensors files (non-persistent
buffers such as rotary frequencies are recomputed by constructing that module anew from the config).
During Phase II each block is materialised just before it is used (``materialise``: its tensors read
from the memory-mapped safetensors files), pruned, propagated, written to its own output shard and
returned to meta (``release``). Peak host memory is the front, one block and the block-input store,
whatever the number of blocks (measured: docs/benchmarks.md, "Peak host memory of Phase II").

What it needs: a model directory of safetensors files (sharded or not) and a decoder-block class
``cls(config, layer_idx)``, as every transformers causal LM has. A model whose weights live on the
meta device by other means (an accelerate ``device_map`` with disk offload) is not handled by
``compress`` directly: load it with ``StreamedWeights`` instead (``compress`` says so).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from rac.reference.contract.models import decoder_blocks

SHARD = "model-{:05d}-of-{:05d}.safetensors"
INDEX = "model.safetensors.index.json"


def _blocks_prefix(model) -> str:
    """The name of the ModuleList holding the decoder blocks ("model.layers")."""
    blocks = decoder_blocks(model)
    return next(name for name, m in model.named_modules() if m is blocks)


class StreamedWeights:
    """A model directory's tensors, read lazily (module docstring)."""

    def __init__(self, model_dir, dtype=None):
        from safetensors import safe_open

        self.dir = Path(model_dir)
        self.dtype = dtype
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise ValueError(f"{self.dir} holds no *.safetensors files: streaming reads weights from them")
        self.key_file = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    self.key_file[key] = f
        self._handles: dict = {}
        self.prefix = None
        self.num_blocks = 0
        self.out = None

    def digest(self) -> str:
        """SHA-256 of the safetensors files' names, sizes and headers plus a sample of their bytes: what a checkpoint
        resumed with streamed weights must match (hashing every byte would read the whole model once more)."""
        h = hashlib.sha256()
        for f in sorted(set(self.key_file.values())):
            data = f.read_bytes() if f.stat().st_size < (256 << 20) else None
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if data is not None:
                h.update(data)
            else:
                with f.open("rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    h.update(fh.read(n))
                    step = max(1, (f.stat().st_size - n) // 64)
                    for k in range(64):
                        fh.seek(8 + n + k * step)
                        h.update(fh.read(4096))
        return h.hexdigest()

    def _tensor(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        f = self.key_file[key]
        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt")  # memory-mapped: reads only what is asked
        return self._handles[f].get_tensor(key)

    # ------------------------------------------------------------------ the model

    def skeleton(self, trust_remote_code: bool = False):
        """The model with every block on meta and everything else loaded on the CPU."""
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.dir, trust_remote_code=trust_remote_code)
        kwargs = {"trust_remote_code": trust_remote_code}
        if self.dtype is not None:
            kwargs["dtype"] = self.dtype
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        blocks = decoder_blocks(model)
        self.prefix = _blocks_prefix(model)
        self.num_blocks = len(blocks)
        self.block_class = type(blocks[0])
        inside = {id(p) for p in blocks.parameters()} | {id(b) for b in blocks.buffers()}
        for name, module in model.named_modules():
            if module is blocks or any(module is b for b in blocks) or name.startswith(self.prefix + "."):
                continue
            own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            if not own or all(id(t) in inside for _, t in own):
                continue
            self._materialise_module(model, name, module, config)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        missing = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(self.prefix + ".")]
        if missing:
            raise ValueError(f"{self.dir}: no tensors for {missing[:3]} in its safetensors files")
        model.eval()
        return model

    def _materialise_module(self, model, name: str, module: nn.Module, config) -> None:
        """Real CPU storage for one module outside the blocks: its checkpoint tensors, or a fresh construction."""
        module.to_empty(device="cpu", recurse=False)
        fresh = None
        own = [("param", *t) for t in module.named_parameters(recurse=False)]
        own += [("buffer", *t) for t in module.named_buffers(recurse=False)]
        for kind, local, tensor in own:
            key = f"{name}.{local}" if name else local
            if key in self.key_file:
                with torch.no_grad():
                    tensor.copy_(self._tensor(key).to(tensor.dtype))
                continue
            if kind == "param":
                if getattr(model.config, "tie_word_embeddings", False):
                    continue  # the head tied to the embedding: tie_weights() shares it
                raise ValueError(f"{self.dir}: parameter {key} is not in its safetensors files")
            if fresh is None:  # a computed buffer (rotary frequencies): build the module anew to get it
                fresh = self._construct_fresh(module, config, key)
            with torch.no_grad():
                tensor.copy_(getattr(fresh, local).to(tensor.dtype))

    @staticmethod
    def _construct_fresh(module, config, key):
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for build in (lambda: type(module)(config=text), lambda: type(module)(text)):
            try:
                with torch.device("cpu"):
                    return build()
            except TypeError:
                continue
        raise ValueError(f"cannot stream this architecture: buffer {key} of {type(module).__name__} is computed at "
                         "construction and the module cannot be built from the config alone")

    # ------------------------------------------------------------------ blocks

    def _block_keys(self, index: int) -> dict:
        prefix = f"{self.prefix}.{index}."
        return {k[len(prefix):]: k for k in self.key_file if k.startswith(prefix)}

    def materialise(self, block: nn.Module, index: int) -> None:
        """Give block ``index`` real CPU storage and its weights from the files (a no-op if it has them)."""
        if not any(t.is_meta for t in [*block.parameters(), *block.buffers()]):
            return
        block.to_empty(device="cpu")
        keys = self._block_keys(index)
        state = block.state_dict()
        missing = [k for k in state if k not in keys]
        if missing:
            raise ValueError(f"{self.dir}: block {index} has no tensors for {missing[:3]} in its safetensors files")
        with torch.no_grad():
            for local, tensor in state.items():
                tensor.copy_(self._tensor(keys[local]).to(tensor.dtype))
        # Close the files: their mapped pages would otherwise stay counted in this process's resident memory
        # until every block had been read (measured: docs/benchmarks.md, "Peak host memory of Phase II").
        self._handles.clear()

    def into(self, out_dir):
        """Write pruned blocks into ``out_dir`` (an existing directory, e.g. an atomic export's temporary one)."""
        self.out = Path(out_dir)
        self.written: dict = {}
        return self

    def release(self, block: nn.Module, index: int) -> None:
        """Write block ``index`` (pruned or propagated through) to its shard and return its storage to meta."""
        from safetensors.torch import save_file

        if self.out is not None:
            name = SHARD.format(index + 1, self.num_blocks + 1)
            tensors = {f"{self.prefix}.{index}.{k}": v.detach().to("cpu").contiguous()
                       for k, v in block.state_dict().items()}
            save_file(tensors, str(self.out / name), metadata={"format": "pt"})
            self.written.update({k: name for k in tensors})
        block.to("meta")

    def finish(self, model, tokenizer=None) -> None:
        """The rest of the export: blocks past the pruned scope copied as they are, the front, config, index."""
        from safetensors.torch import save_file

        out, total = self.out, self.num_blocks + 1
        for index in range(self.num_blocks):
            name = SHARD.format(index + 1, total)
            if (out / name).exists():
                continue
            tensors = {v: self._tensor(v) for v in self._block_keys(index).values()}
            save_file(tensors, str(out / name), metadata={"format": "pt"})
            self.written.update({k: name for k in tensors})
        front = {n: t.detach().contiguous() for n, t in model.state_dict().items()
                 if not n.startswith(self.prefix + ".") and not t.is_meta}
        if getattr(model.config, "tie_word_embeddings", False):
            front = {n: t for n, t in front.items() if n in self.key_file}
        last = SHARD.format(total, total)
        save_file({n: t.clone() for n, t in front.items()}, str(out / last), metadata={"format": "pt"})
        self.written.update({n: last for n in front})
        size = sum(f.stat().st_size for f in out.glob("model-*.safetensors"))
        index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(self.written.items()))}
        (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
        model.config.save_pretrained(out)
        generation = self.dir / "generation_config.json"
        if generation.is_file():
            shutil.copy2(generation, out / generation.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        self._handles.clear()


def return_freed_memory() -> bool:
    """Ask glibc to serve allocations of 1 MiB and more with their own mappings, returned to the system when
    freed (mallopt M_MMAP_THRESHOLD; a fixed threshold also stops glibc raising it after each free). Blocks,
    Hessians and chunk activations come and go once per block; in the heap, their freed space stayed
    counted. Measured with bench_stream_memory's Phase II marks on a random 12 x 512 Llama (1 thread, CPU):
    Phase II's peak over its start 194 -> 152 MiB (RssAnon; 141 with the threshold set in the environment
    before the process starts). False where there is no glibc (nothing done)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(-3, 1 << 20))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def check_materialised(model) -> None:
    """ValueError saying what is needed when parameters of ``model`` are on the meta device (an accelerate
    device_map with offload, or a skeleton without a stream)."""
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(
            f"model: {len(meta)} parameters are on the meta device (e.g. {meta[0]}), offloaded without their data; "
            "rac.fast.compress needs them in memory, or a stream: load the model with "
            "rac.fast.streamed.StreamedWeights(model_dir).skeleton() and pass stream=weights.into(out_dir) "
            "(rac prune --stream-weights)"
        )


__all__ = ["INDEX", "SHARD", "StreamedWeights", "check_materialised", "return_freed_memory"]
