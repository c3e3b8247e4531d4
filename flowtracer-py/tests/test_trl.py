"""flowtracer.trl inside TRL 1.16's GRPOTrainer: a tiny random Llama, SDPA, CPU, two steps.

Both capture sites are run: the loss's own forward (TRL's on-policy default, no old
log-probabilities) and the old-log-prob forward (``num_iterations = 2``). The captured ``Ā``
is compared with the same model's eager attention probabilities through the existing path
(``flowtracer.score_batch`` on their layer mean), within CAPTURE_RTOL / CAPTURE_ATOL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_llama import char_tokenizer, copy_with_attention, tiny_llama
from trl import GRPOConfig

import flowtracer
from flowtracer.trl import FlowTracerConfig, FlowTracerGRPOTrainer, select_layers
from flowtracer.trl.trainer import LOGGED_METRICS

#: Captured (SDPA wrapper, f32 torch/core) against eager (f32 softmax) on the same weights:
#: |captured - eager| <= CAPTURE_RTOL * |eager| + CAPTURE_ATOL, on Ā and on τ (throughput).
CAPTURE_RTOL = 1e-4
CAPTURE_ATOL = 1e-5

GENERATIONS = 4
COMPLETION = 10
#: The answer is the completion's last three characters (before an end-of-sequence token).
MARKER = r"(.{3})(?:\[EOS\])?$"


def reward_by_rank(completions, **kwargs):
    """Differs within every group: the k-th generation of a prompt gets reward k."""
    return [float(i % GENERATIONS) for i in range(len(completions))]


class Recording(FlowTracerGRPOTrainer):
    """Records the advantages the loss itself uses (through TRL's off-policy mask hook)."""

    seen_advantages: list[tuple[int, ...]] = []

    @staticmethod
    def get_off_policy_mask(advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold):
        Recording.seen_advantages.append(tuple(advantages.shape))
        return torch.ones_like(mask)


def make_trainer(tmp_path, per_device=8, **args):
    tok = char_tokenizer()
    model = tiny_llama(tok)
    data = Dataset.from_dict({"prompt": ["12+34=", "7*8=", "(5-2)*3=", "9+9="] * 2})
    config = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=per_device,
        num_generations=GENERATIONS,
        max_completion_length=COMPLETION,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast; f32 so eager and captured compare tightly
        seed=0,
        off_policy_mask_threshold=1e9,
        generation_kwargs={"min_new_tokens": 4},
        **args,
    )
    Recording.seen_advantages = []
    if config.beta:
        # TRL loads a reference model by name: give both as a saved checkpoint (this also
        # runs the trainer's by-name path, which asks for flowtracer_sdpa itself).
        model.save_pretrained(tmp_path / "model")
        model = str(tmp_path / "model")
    return Recording(
        model,
        reward_funcs=reward_by_rank,
        args=config,
        train_dataset=data,
        processing_class=tok,
        flow_config=FlowTracerConfig(answer_marker=MARKER),
    )


def eager_attention(trainer, last, state):
    """Ā of a scored batch from eager attention probabilities (weights as when it was scored)."""
    ids = torch.cat([last["prompt_ids"], last["completion_ids"]], dim=1)
    mask = torch.cat([last["prompt_mask"], last["completion_mask"]], dim=1)
    eager = copy_with_attention(trainer.accelerator.unwrap_model(trainer.model), "eager")
    eager.load_state_dict(state)
    with torch.no_grad():
        out = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    chosen = select_layers("middle", eager.config.num_hidden_layers)
    a = torch.stack([out.attentions[i] for i in chosen]).mean(dim=(0, 2)).numpy()  # [B, N, N]
    return a, mask.numpy()


SITES = {
    # capture site: (trainer arguments, scorings in 2 steps, rows per loss call, forward chunks)
    "loss_forward": ({}, 2, 8, 1),
    "old_logps_forward": ({"num_iterations": 2}, 1, 8, 1),
    # with a reference model (beta > 0): its forward is never captured
    "loss_forward_with_reference": ({"beta": 0.1}, 2, 8, 1),
    # a generation of 8 whose old log-probs TRL computes in two forward chunks of 4
    "old_logps_chunked": ({"per_device": 4, "steps_per_generation": 2}, 1, 4, 2),
}


@pytest.mark.parametrize("site", sorted(SITES))
def test_grpo_trainer_two_steps(tmp_path, site):
    extra, scorings, loss_rows, chunks = SITES[site]
    trainer = make_trainer(tmp_path, **extra)
    scored = []
    original = trainer._flow_score

    def keep(batch, spans, capture, started):
        assert len(capture._chunks) == chunks  # one accumulator per forward call
        shaped = original(batch, spans, capture, started)
        weights = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
        scored.append((dict(batch), spans, dict(trainer._flow_last, state=weights), shaped))
        return shaped

    trainer._flow_score = keep
    trainer.train()

    # Scored once per generation (2 iterations, or 2 steps per generation, reuse one).
    assert len(scored) == scorings
    b, t = 8, None
    for batch, spans, last, shaped in scored:
        t = batch["completion_ids"].shape[1]
        assert tuple(shaped.shape) == (b, t)
        w = last["weights"]
        gamma = flowtracer.defaults()["gamma_flow"]
        adv = batch["advantages"].numpy()
        # tokens with weight gamma and a nonzero advantage exist in every batch
        assert ((w == gamma) & (adv[:, None] != 0) & batch["completion_mask"].numpy().astype(bool)).any()
        assert np.allclose(shaped.numpy(), adv[:, None] * w, rtol=0, atol=1e-6)
        assert sum(a is None for a in spans["answer"]) < b
    # the loss saw (B, T) advantages
    assert Recording.seen_advantages and all(len(s) == 2 and s[0] == loss_rows for s in Recording.seen_advantages)
    logs = [h for h in trainer.state.log_history if "flow/no_answer_frac" in h]
    assert logs
    for h in logs:
        assert set(LOGGED_METRICS) <= set(h)
        assert h["flow/no_answer_frac"] < 1
        assert h["flow/unscored_frac"] == 0
        assert abs(h["flow/answer_mass"] - 1) < 1e-4
        assert 0 <= h["flow/conservation_residual"] < 1e-5  # f32 Ā: rounding only

    # The captured path against eager attention through the existing path.
    batch, spans, last, _ = scored[-1]
    a_eager, mask = eager_attention(trainer, batch, last["state"])
    a_cap = last["attention"]
    for i in range(b):
        live = mask[i].astype(bool)
        np.testing.assert_allclose(
            a_cap[i][np.ix_(live, live)], a_eager[i][np.ix_(live, live)], rtol=CAPTURE_RTOL, atol=CAPTURE_ATOL
        )
    kwargs = dict(attention_mask=mask, completion_start=spans["completion_start"], completion_length=t)
    w_eager = flowtracer.score_batch(a_eager, spans["question"], spans["answer"], spans["response"], **kwargs)
    w_cap = last["weights"]
    mismatched = np.argwhere(w_eager != w_cap)
    for i, j in mismatched:  # only a near-tie in τ may flip (method §9's tie rule)
        live = mask[i].astype(bool)
        tau_e = flowtracer.trace(a_eager[i][np.ix_(live, live)], spans["question"][i], spans["answer"][i]).throughput
        tau_c = flowtracer.trace(a_cap[i][np.ix_(live, live)], spans["question"][i], spans["answer"][i]).throughput
        np.testing.assert_allclose(tau_c, tau_e, rtol=CAPTURE_RTOL, atol=CAPTURE_ATOL)
        pos = spans["completion_start"][i] + j
        near = np.abs(tau_e - tau_e[pos]) <= CAPTURE_RTOL * abs(tau_e[pos]) + CAPTURE_ATOL
        assert near.sum() > 1, f"weight of sequence {i}, token {pos} differs without a tie in τ"
    for i in range(b):
        if spans["answer"][i] is None:
            continue
        live = mask[i].astype(bool)
        tau_e = flowtracer.trace(a_eager[i][np.ix_(live, live)], spans["question"][i], spans["answer"][i]).throughput
        tau_c = flowtracer.trace(a_cap[i][np.ix_(live, live)], spans["question"][i], spans["answer"][i]).throughput
        np.testing.assert_allclose(tau_c, tau_e, rtol=CAPTURE_RTOL, atol=CAPTURE_ATOL)


def test_trl_owned_options_are_refused():
    with pytest.raises(flowtracer.Error) as e:
        FlowTracerConfig.from_dict({"scale_rewards": "batch"})
    assert e.value.kind == "InvalidConfig" and e.value.field == "scale_rewards"
    assert "GRPOConfig.scale_rewards" in str(e.value)
    with pytest.raises(flowtracer.Error) as e:
        FlowTracerConfig.from_dict({"rhoo": 0.3})
    assert e.value.kind == "UnknownName"
    with pytest.raises(flowtracer.Error) as e:
        FlowTracerConfig(rho=1.5)
    assert e.value.kind == "InvalidConfig"


def test_config_defaults_are_the_cores():
    c = FlowTracerConfig()
    d = flowtracer.defaults()
    for name in flowtracer.SCORING_OPTIONS:
        assert getattr(c, name) == d[name], name


def test_an_eager_model_is_refused(tmp_path):
    tok = char_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      report_to="none", use_cpu=True, bf16=False)
    with pytest.raises(flowtracer.Error) as e:
        FlowTracerGRPOTrainer(tiny_llama(tok, attn="eager"), reward_funcs=reward_by_rank, args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["1+1="]}), processing_class=tok)
    assert e.value.kind == "InvalidConfig" and e.value.field == "attn_implementation"


def test_a_bad_layer_selection_fails_at_construction(tmp_path):
    tok = char_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      report_to="none", use_cpu=True, bf16=False)
    with pytest.raises(flowtracer.Error) as e:
        FlowTracerGRPOTrainer(tiny_llama(tok), reward_funcs=reward_by_rank, args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["1+1="]}), processing_class=tok,
                              flow_config=FlowTracerConfig(layers="4..9"))
    assert e.value.kind == "InvalidLayerSelection"
