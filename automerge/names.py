"""Names that more than one layer checks against, each defined once (no imports: any layer may use it)."""

# dtypes a merge writes and a recipe may name (engine maps them to torch dtypes)
DTYPES = ("float32", "float16", "bfloat16")

# the demo zoo: full models, and the PEFT LoRA adapters trained on the base (all usable as zoo:NAME)
ZOO_MODELS = ("base", "code", "lang", "tests", "mix")
ZOO_ADAPTERS = ("code-lora", "lang-lora")
