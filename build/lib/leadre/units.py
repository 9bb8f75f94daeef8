"""How the platform's arrays and tables encode things, shared by every layer (data, prompts, baselines, generation,
metrics): ad-id lists padded with PAD, timestamps in milliseconds."""

PAD = -1  # fills a fixed-width list of ad ids past its last real entry; never a real ad id (contracts: >= 0)
MS_PER_DAY = 86_400_000
