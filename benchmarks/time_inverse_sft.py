"""Time the inverse_sft training (train_lora, params.yaml values) at a given model.dtype and lora_dropout.

    PYTHONPATH=. python benchmarks/time_inverse_sft.py bfloat16 0.0
"""
import sys, time, os, json
from humpback import formats, prompts
from humpback.config import load_params, ModelParams
from humpback.training import train_lora
from safetensors import safe_open
params = load_params("params.yaml")
p = params.inverse_sft
dtype, drop = sys.argv[1], float(sys.argv[2])
p.lora_dropout = drop
m = params.model; m.dtype = dtype
pairs = formats.parse_guanaco(formats.read_jsonl("data/raw/guanaco.jsonl"), formats.ParseReport())
ex = [prompts.backward_example(x, p.max_response_words) for x in pairs]
train, ev = ex[p.eval_size:], ex[:p.eval_size]
t = time.perf_counter(); l0 = os.getloadavg()[0]
os.makedirs("/tmp/sp", exist_ok=True)
out = f"/tmp/sp/backward-{dtype}-{drop}"
metrics = train_lora(m, p, train, ev, out, f"/tmp/sp/live-{dtype}-{drop}", "inverse_sft")
el = time.perf_counter() - t
with safe_open(out + "/adapter_model.safetensors", "pt") as f:
    dts = {str(f.get_tensor(k).dtype) for k in f.keys()}
print("RESULT", dtype, drop, json.dumps(metrics), f"{el:.1f}s", "adapter dtypes", dts, "load", l0, os.getloadavg()[0])
