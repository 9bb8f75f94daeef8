"""Scoring responses under a model: what DPO changed, and the baseline SFT's loss must beat.

Texts are laid out by the tokenizer's chat template exactly as the trainers lay them out: the prompt rendered with
the generation prompt, the response as the rest of the full conversation.
"""

from __future__ import annotations



def _split(tokenizer, prompt: list[dict], response: list[dict]) -> tuple[list[int], list[int]]:
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    if not full.startswith(head):
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    return (tokenizer(head, add_special_tokens=False)["input_ids"],
            tokenizer(full[len(head):], add_special_tokens=False)["input_ids"])


def response_logprobs(model, tokenizer, prompts: list[list[dict]], responses: list[list[dict]],
                      batch_size: int) -> list[float]:
    """Sum of the log-probabilities of each response's tokens given its prompt."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    scores: list[float] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            pairs = [_split(tokenizer, p, r) for p, r in zip(prompts[start:start + batch_size],
                                                            responses[start:start + batch_size])]
            width = max(len(h) + len(t) for h, t in pairs)
            ids = torch.full((len(pairs), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            scored = torch.zeros_like(ids, dtype=torch.bool)
            for row, (head, tail) in enumerate(pairs):  # right padding: positions stay 0..n for every row
                ids[row, :len(head) + len(tail)] = torch.tensor(head + tail)
                mask[row, :len(head) + len(tail)] = 1
                scored[row, len(head):len(head) + len(tail)] = True
            ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            token_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            scores.extend((token_logp * scored[:, 1:]).sum(-1).tolist())
    model.train(was_training)
    return scores


def preference_accuracy(model, tokenizer, pairs, batch_size: int) -> dict[str, float]:
    """How often the model gives the chosen response a higher likelihood than the rejected one, and by how much."""
    chosen = response_logprobs(model, tokenizer, pairs["prompt"], pairs["chosen"], batch_size)
    rejected = response_logprobs(model, tokenizer, pairs["prompt"], pairs["rejected"], batch_size)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"preference_accuracy": sum(m > 0 for m in margins) / len(margins),
            "logp_margin": sum(margins) / len(margins)}


def unigram_loss(train_labels: list[list[int]], valid_labels: list[list[int]], vocab: int) -> float:
    """Per-token cross-entropy of the valid responses under the train responses' token frequencies (add-one).

    Over the tokens the trainer scores (labels other than -100), so it measures what SFT's eval_loss measures.
    A model that ignores the prompt can reach this loss; SFT's validation loss has to land well below it.
    """
    import numpy as np

    def scored(labels: list[list[int]]) -> np.ndarray:
        flat = np.fromiter((t for row in labels for t in row), dtype=np.int64)
        return flat[flat != -100]

    train, valid = scored(train_labels), scored(valid_labels)
    counts = np.bincount(train, minlength=max(vocab, int(valid.max(initial=0)) + 1))
    return float(-np.log((counts[valid] + 1) / (len(train) + vocab)).mean())
