"""The meta loop: decides when a cycle runs, what it focuses on and how aggressively.

It never executes anything. Each cycle it folds the evidence it has read from the
topics (health windows, anomaly scores, outcomes, approvals, plans, directives, the
ledger's trust violations) into a :class:`~metaheal.agents.meta.focus.FocusDecision`,
moves the guardrail level (:mod:`metaheal.agents.meta.guardrails`), enables probes
(:mod:`metaheal.agents.meta.probes`), waits a bounded time for the advisors' MLAdvice and
issues at most one Directive per target service.

Ordering is write-ahead: every decision is appended to the ledger *before* it is
published (``cycle_focus_decided`` -> ``cycles``, ``guardrail_changed`` -> ``control``,
``probes_enabled`` -> ``probes``, ``directive_issued`` -> ``directives``); a ledger
failure stops the cycle, so an unaudited directive can never reach an executor.

Only the replica holding the lease on the control topic (:mod:`metaheal.agents.meta.leader`)
runs cycles; standbys keep reading so that a takeover starts warm. Duplicate directives
across a takeover are prevented by state every replica reads from the topics: a service
with a directive or plan still open (no outcome yet, within its time budget) gets none,
and directives already recorded for a cycle (on ``directives`` or as ``directive_issued``
in the ledger) are never re-issued. A focus with no applicable playbook (neither declared
for the focus area nor recommended by the advisors, e.g. trust violations) directs nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, Protocol

from metaheal.agents.meta.confidence import focus_playbooks, order_by_diagnosis
from metaheal.agents.meta.cycle_ids import CycleIds
from metaheal.agents.meta.focus import FocusDecision, decide_focus
from metaheal.agents.meta.guardrails import GuardrailChange, GuardrailState, time_budget
from metaheal.agents.meta.leader import CYCLE_KEY, GUARDRAILS_KEY, ControlTopic
from metaheal.agents.meta.learning import Insight, Learner
from metaheal.agents.meta.observations import ACTOR, Inputs, Observations
from metaheal.agents.meta.probes import probe_commands, probes_for
from metaheal.config import Settings
from metaheal.errors import LedgerFailed, LedgerKeyError
from metaheal.events import (
    CycleFocus,
    Directive,
    DirectiveAdvice,
    MLAdvice,
    ProbeCommand,
)
from metaheal.kafka import KafkaUnavailable, Producer
from metaheal.kafka.serializers import (
    AvroSerializer,
)
from metaheal.ledger import ImmutableLog
from metaheal.ledger.authz import SELF_HEAL, SUBSYSTEM
from metaheal.ledger.signing import RecordSigner

logger = logging.getLogger(__name__)

NEUTRAL_ADVICE = 0.5
UNKNOWN_CAUSE = "unknown"  # the advisors' "no idea" candidate: never a root cause, never its confidence


class Ledger(Protocol):
    """What the meta loop needs of :class:`~metaheal.ledger.ImmutableLog`."""

    async def append(
        self,
        *,
        actor: str,
        action: str,
        resource: str = ...,
        subsystem: str = ...,
        payload: dict[str, Any] | None = ...,
        result: str = ...,
        cycle_id: str = ...,
    ) -> Any: ...


# --- the service ---------------------------------------------------------------------------------


class MetaLoop:
    """``await MetaLoop(settings).run(stop)``; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        replica_id: str | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.cfg = settings.cycle
        self.replica_id = replica_id or f"meta-{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.learner = Learner(half_life=self.cfg.learning_half_life_seconds)
        self.obs = Observations(settings, self.learner)
        self.guardrails = GuardrailState(
            level=settings.guardrails.initial_level,
            rules=settings.guardrails,
            stable_cycles_to_loosen=self.cfg.stable_cycles_to_loosen,
            min_outcomes=self.cfg.min_outcomes_for_guardrails,
        )
        self.ids = CycleIds()
        self.playbooks, self.priors, self.fixes = focus_playbooks(settings)
        self.obs.fixes = dict(self.fixes)
        self._ledger = ledger
        self._owns_ledger = ledger is None
        self._leading = False
        self._last_cycle_at: float | None = None
        self._early: str | None = None
        self._unledgered: deque[Insight] = deque(maxlen=1000)
        self.cycles_run = 0
        self.directives_issued: list[Directive] = []
        self._ser_cycle = AvroSerializer(CycleFocus)
        self._ser_directive = AvroSerializer(Directive)
        self._ser_probe = AvroSerializer(ProbeCommand)
        self._signer = RecordSigner(settings.keys, ACTOR)
        self._violations_logged: dict[tuple[str, str], float] = {}

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._inputs = await asyncio.to_thread(Inputs, self.settings)
        self._control = ControlTopic(self.settings, self.replica_id, self.clock)
        self._producer = Producer(self.settings.kafka)
        graceful = False
        leadership = asyncio.create_task(self._leadership(stop))
        try:
            while not stop.is_set():
                await self._pump(0.2)
                if self._leading and self._inputs.caught_up:
                    await self._ledger_refused()
                    await self._ledger_insights()
                    trigger = self._due(self.clock())
                    if trigger is not None:
                        try:
                            await self.run_cycle(trigger, stop)
                        except KafkaUnavailable as exc:
                            # the cycle is abandoned; the next one re-reads everything from the topics
                            logger.error("meta_loop cycle aborted replica=%s error=%s", self.replica_id, exc)
            graceful = True
        finally:
            leadership.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leadership
            await asyncio.to_thread(self._close, graceful)

    async def _leadership(self, stop: asyncio.Event) -> None:
        """Heartbeats in their own task, so a long cycle (advice wait, slow ledger) keeps the lease."""
        while not stop.is_set():
            if self._inputs.caught_up:
                await self._lease_step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.lease_seconds / 3)

    def _close(self, graceful: bool) -> None:
        try:
            if graceful:
                self._control.release()
        except KafkaUnavailable as exc:
            logger.warning("meta_loop could not release lease replica=%s error=%s", self.replica_id, exc)
        finally:
            self._control.close()
            self._inputs.close()
            self._producer.close(2.0)
            self._drop_ledger()

    def _drop_ledger(self) -> None:
        """Close a ledger we opened; the next append opens a fresh one that resumes from the topic's tail."""
        if self._owns_ledger and self._ledger is not None:
            close = getattr(self._ledger, "close", None)
            if close is not None:
                close()
            self._ledger = None

    async def _lease_step(self) -> None:
        was = self._leading
        try:
            self._leading = await asyncio.to_thread(self._control.acquire_or_renew)
        except KafkaUnavailable as exc:
            logger.warning("meta_loop lease step failed replica=%s error=%s", self.replica_id, exc)
            self._leading = False
        except LedgerKeyError as exc:  # lease records are signed: without its key the meta loop cannot lead
            logger.error("meta_loop cannot sign its lease replica=%s error=%s", self.replica_id, exc)
            self._leading = False
        if self._leading and not was:
            self._on_elected()
        elif was and not self._leading:
            logger.warning("meta_loop lost leadership replica=%s", self.replica_id)

    def _on_elected(self) -> None:
        # another replica may have appended since we last did: never append from a stale sequencer tail
        self._drop_ledger()
        view = self._control.view
        if view.guardrails:
            self.guardrails.restore(view.guardrails)
            # outcomes replayed from the topic were already fed to the guardrails by the previous leader
            if isinstance(view.guardrails.get("ts"), int | float):
                self.learner.new_since_cycle = self.learner.count_since(float(view.guardrails["ts"]))
        for cid in self.obs.cycle_ids:
            self.ids.observe(cid)
        if view.last_cycle:
            self.ids.observe(str(view.last_cycle.get("cycle_id", "")))
            self._last_cycle_at = float(view.last_cycle.get("ts", 0.0))
        logger.info(
            "meta_loop elected replica=%s epoch=%d guardrail_level=%s last_counter=%d",
            self.replica_id,
            self._control.epoch,
            self.guardrails.level,
            self.ids.last_counter,
        )

    def _due(self, now: float) -> str | None:
        if self._last_cycle_at is None:
            return self._early or "scheduled"
        if now - self._last_cycle_at >= self.cfg.cycle_seconds:
            return "scheduled"
        if self._early is not None and now - self._last_cycle_at >= self.cfg.min_cycle_gap_seconds:
            return self._early
        return None

    async def _pump(self, timeout: float) -> None:
        batch = await asyncio.to_thread(self._inputs.poll, timeout)
        now = self.clock()
        for short, event in batch:
            trigger, insight = self.obs.ingest(short, event, now)
            if isinstance(event, CycleFocus):
                self.ids.observe(event.cycle_id)
            if trigger is not None and self._early is None:
                self._early = trigger
                logger.info("meta_loop early trigger replica=%s reason=%s", self.replica_id, trigger)
            if insight is not None:
                self._unledgered.append(insight)

    # --- ledger ------------------------------------------------------------------------------

    def _get_ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = ImmutableLog(self.settings)
        return self._ledger

    async def _append(
        self, action: str, resource: str, payload: dict[str, Any], cycle_id: str, result: str = "ok"
    ) -> Any:
        try:
            return await self._get_ledger().append(
                actor=ACTOR,
                action=action,
                resource=resource,
                subsystem=SUBSYSTEM,
                payload=payload,
                result=result,
                cycle_id=cycle_id,
            )
        except KafkaUnavailable as exc:  # LedgerUnavailable included
            logger.error(
                "meta_loop ledger append failed action=%s cycle_id=%s error=%s: not publishing", action, cycle_id, exc
            )
            raise LedgerFailed(f"ledger append of {action} failed: {exc}") from exc

    async def _ledger_refused(self) -> None:
        """A ``trust_violation`` entry for records refused while following (one per type and reason a minute)."""
        while self._inputs.refused:
            record_type, dl, exc = self._inputs.refused.popleft()
            key = (record_type, exc.reason)
            now = self.clock()
            if now - self._violations_logged.get(key, float("-inf")) < 60.0:
                continue
            self._violations_logged[key] = now
            payload = {
                "record_type": record_type,
                "reason": exc.reason,
                "detail": exc.detail,
                "topic": dl.source_topic,
                "partition": dl.partition,
                "offset": dl.offset,
            }
            try:
                await self._append("trust_violation", f"records:{record_type}", payload, "none", result="refused")
            except LedgerFailed:
                return

    async def _ledger_insights(self) -> None:
        self.obs.judge_advice(self.clock())
        while self.obs.weight_updates:
            update = self.obs.weight_updates[0]
            if update.outcome_id not in self.obs.weights_in_ledger:
                cycle = self.obs.last_cycle.cycle_id if self.obs.last_cycle else "none"
                try:
                    await self._append("learning_update", "advice_weights", update.payload(), cycle)
                except LedgerFailed:
                    return  # retried on the next pass
                self.obs.weights_in_ledger.add(update.outcome_id)
                logger.info("meta_loop learning_update advice_weights %s", update.sentence)
            self.obs.weight_updates.popleft()
        while self._unledgered:
            insight = self._unledgered[0]
            if insight.outcome_id in self.obs.learned_in_ledger:
                self._unledgered.popleft()
                continue
            cycle = self.obs.last_cycle.cycle_id if self.obs.last_cycle else "none"
            try:
                await self._append("learning_update", f"playbook:{insight.playbook}", insight.payload(), cycle)
            except LedgerFailed:
                return  # retried on the next pass; learning state itself is already updated
            self._unledgered.popleft()
            self.obs.learned_in_ledger.add(insight.outcome_id)
            logger.info("meta_loop learning_update insight=%r", insight.sentence)

    async def _publish(self, topic_short: str, key: str, value: bytes, signed: tuple[str, str] | None = None) -> None:
        """``signed``: ``(record_type, record_id)`` to sign the record as the meta loop."""
        headers = self._signer.sign(signed[0], value, key=key, record_id=signed[1]) if signed else None
        await asyncio.to_thread(
            self._producer.send, self.settings.topics.name(topic_short), value, key, headers=headers
        )

    # --- one cycle ---------------------------------------------------------------------------

    async def run_cycle(self, trigger: str, stop: asyncio.Event) -> CycleFocus | None:
        """Decide, record, publish, wait for advice, direct. Returns the CycleFocus (None if aborted)."""
        started = self.clock()
        self._last_cycle_at = started
        self._early = None
        if not await asyncio.to_thread(self._control.still_leader):
            self._leading = False
            logger.warning("meta_loop fenced before cycle replica=%s", self.replica_id)
            return None
        cycle_id = self.ids.next(started)
        await asyncio.to_thread(
            self._control.put,
            CYCLE_KEY,
            {
                "cycle_id": cycle_id,
                "counter": self.ids.last_counter,
                "ts": started,
                "holder": self.replica_id,
                "epoch": self._control.epoch,
            },
        )
        self.cycles_run += 1
        decision = decide_focus(self.obs.evidence(started), self.cfg.focus_decision_min_confidence)
        focus = decision.focus_area
        change = self.guardrails.decide(focus, self.learner.recent_success_rate(started), self.learner.new_since_cycle)
        self.learner.new_since_cycle = 0
        budget = time_budget(focus, self.guardrails.level, self.learner.typical_duration(focus, started))
        priorities = self.learner.playbook_ranking(self.playbooks.get(focus, []), started)
        reasoning = [*decision.reasoning]
        if change.adjustment != "maintain":
            reasoning.append(f"Guardrails: {change.reason}.")
        if trigger != "scheduled":
            reasoning.append(f"Early cycle: {trigger}.")
        verdicts = self.obs.awaiting_verdict(started)
        waiting = sorted({r.service for r in self.obs.pending_approvals(started)} - set(verdicts))
        if waiting:
            reasoning.append(
                f"Approvals pending on {', '.join(waiting)}: their plans stay open until an operator decides."
            )
        if verdicts:
            reasoning.append(
                f"Verdicts pending on {', '.join(verdicts)}: a change is in place unverified (its telemetry went "
                "missing); no new directive there until an operator or returning telemetry settles it."
            )
        cf = CycleFocus(
            cycle_id=cycle_id,
            ts=started,
            focus_area=focus,
            confidence=min(1.0, decision.confidence),
            reasoning=reasoning,
            guardrail_adjustment=change.adjustment,
            guardrail_level=self.guardrails.level,
            extra_probes=probes_for(focus),
            playbook_priorities=priorities,
            time_budget_seconds=budget,
            target_services=decision.target_services,
            trigger=trigger.split(":")[0],
        )
        try:
            await self._decide_and_publish(cf, change, decision)
        except LedgerFailed:
            if change.changed:
                self.guardrails.level = change.previous  # the change was never recorded, so it never happened
            return None
        logger.info(
            "meta_loop cycle cycle_id=%s focus=%s confidence=%.2f level=%s budget=%d targets=%s trigger=%s",
            cycle_id,
            focus,
            cf.confidence,
            cf.guardrail_level,
            budget,
            ",".join(cf.target_services),
            trigger,
        )
        if focus == "routine_maintenance" or not cf.target_services:
            return cf
        advice = await self._wait_for_advice(cycle_id, stop)
        await self._direct(cf, decision, advice)
        return cf

    async def _decide_and_publish(self, cf: CycleFocus, change: GuardrailChange, decision: FocusDecision) -> None:
        payload = cf.model_dump(mode="json") | {"scores": decision.scores, "epoch": self._control.epoch}
        await self._append("cycle_focus_decided", SELF_HEAL, payload, cf.cycle_id, result="decided")
        if change.changed:  # the CycleFocus shows the new level, so the change is recorded before it is published
            await self._append(
                "guardrail_changed",
                "guardrails",
                {
                    "previous": change.previous,
                    "level": change.level,
                    "adjustment": change.adjustment,
                    "reason": change.reason,
                },
                cf.cycle_id,
            )
        await self._publish("cycles", cf.cycle_id, self._ser_cycle(cf))
        await asyncio.to_thread(
            self._control.put, GUARDRAILS_KEY, self.guardrails.to_json() | {"cycle_id": cf.cycle_id, "ts": cf.ts}
        )
        commands = probe_commands(cf.cycle_id, cf.focus_area, cf.target_services, cf.time_budget_seconds, cf.ts)
        if commands:
            await self._append(
                "probes_enabled",
                f"probes:{','.join(cf.target_services)}",
                {
                    "probes": [c.probe for c in commands],
                    "services": cf.target_services,
                    "ttl_seconds": cf.time_budget_seconds,
                },
                cf.cycle_id,
            )
            for c in commands:
                await self._publish("probes", c.probe, self._ser_probe(c), ("probe_command", c.probe_id))

    async def _wait_for_advice(self, cycle_id: str, stop: asyncio.Event) -> MLAdvice | None:
        deadline = self.clock() + self.cfg.advice_wait_seconds
        while cycle_id not in self.obs.advice and not stop.is_set():
            left = deadline - self.clock()
            if left <= 0:
                break
            await self._pump(min(0.2, left))
        return self.obs.advice.get(cycle_id)

    def _combine(
        self, service: str, cf: CycleFocus, decision: FocusDecision, advice: MLAdvice | None
    ) -> tuple[float, DirectiveAdvice, str]:
        ml = self.settings.ml
        # configured weights, moved by each advisor's record against verified outcomes (advice_accuracy)
        weight = self.obs.accuracy.weights(cf.ts)
        # the service's own evidence, not the cycle's best (a target may be weaker than the strongest one)
        anomaly = round(min(1.0, decision.service_confidence.get(service, cf.confidence)), 4)
        rc_weight = weight["root_cause"]
        if advice is None:
            # without advice the playbook term is what we learned about our own first choice
            books = list(cf.playbook_priorities)
            learned = self.learner.success_rate(playbook=books[0], now=cf.ts) if books else None
            rc = NEUTRAL_ADVICE
            pb = learned if learned is not None else NEUTRAL_ADVICE
            causes: list[str] = []
        else:
            cands = [c for c in advice.root_cause_candidates if c.service in (None, service)]
            known = [c for c in cands if c.cause != UNKNOWN_CAUSE]
            rc = max((c.probability for c in known), default=0.0)
            if cands and max(cands, key=lambda c: c.probability).cause == UNKNOWN_CAUSE:
                # the advisors say they do not know the cause: that is no vote against acting, so the
                # root-cause term drops out of the weighted mean instead of counting as zero
                rc_weight = 0.0
            causes = [
                c.cause for c in sorted(known, key=lambda c: -c.probability) if c.probability >= ml.ml_min_confidence
            ]
            books = [
                p.name
                for p in sorted(advice.ranked_playbooks, key=lambda p: -p.score)
                if p.confidence >= ml.ml_min_confidence
            ]
            pb = self._playbook_term(advice, books or list(cf.playbook_priorities))
        total = weight["anomaly"] + rc_weight + weight["playbook"]
        combined = round((weight["anomaly"] * anomaly + rc_weight * rc + weight["playbook"] * pb) / total, 4)
        if advice is None:
            note = (
                f"No ML advice for {cf.cycle_id} within {self.cfg.advice_wait_seconds:g}s: proceeding on focus "
                f"evidence alone at confidence {combined:.2f} (learned playbook order, playbook term {pb:.2f})"
            )
        elif not books:
            weights: dict[str, float] = defaultdict(float)
            for c in known:
                weights[c.cause] += c.probability
            books = order_by_diagnosis(list(cf.playbook_priorities), self.fixes, weights)
            top = max(weights.items(), key=lambda kv: kv[1], default=None)
            note = (
                f"Playbook ranker below ml_min_confidence {ml.ml_min_confidence:.2f}: playbooks ordered by diagnosis "
                f"({top[0] if top else 'none'} {top[1] if top else 0.0:.2f}) then learned order, "
                f"confidence {combined:.2f}"
            )
        elif rc_weight == 0.0:
            note = (
                f"ML advice combined: anomaly {anomaly:.2f}, root cause unknown (term left out), "
                f"playbook {pb:.2f} -> {combined:.2f}"
            )
        else:
            note = (
                f"ML advice combined: anomaly {anomaly:.2f}, root cause {rc:.2f}, playbook {pb:.2f} -> {combined:.2f}"
            )
        scores = {"anomaly": anomaly, "root_cause": rc, "playbook": pb, "combined": combined}
        scores |= {f"weight.{k}": v for k, v in weight.items()}
        if advice is not None:
            scores |= {f"advisor.{k}": v for k, v in advice.confidence_scores.items()}
        return (
            combined,
            DirectiveAdvice(root_causes=causes, recommended_playbooks=books, confidence_scores=scores),
            note,
        )

    def _playbook_term(self, advice: MLAdvice, books: list[str]) -> float:
        """How likely the advisors think the playbook we will recommend first is to work.

        The ranker's score is a posterior (Thompson) estimate of success and its
        ``confidence`` says how much evidence is behind it, so the score counts in
        proportion to that evidence and the playbook's declared prior fills the rest:
        a fresh system leans on the priors, an experienced one on what it saw.
        """
        ranked = {p.name: p for p in advice.ranked_playbooks}
        first = next((b for b in books if b in ranked), None)
        if first is None:
            return 0.0 if advice.ranked_playbooks else NEUTRAL_ADVICE
        p = ranked[first]
        prior = self.priors.get(first, p.score)
        return round(p.confidence * p.score + (1 - p.confidence) * prior, 4)

    async def _direct(self, cf: CycleFocus, decision: FocusDecision, advice: MLAdvice | None) -> None:
        for service in cf.target_services:
            now = self.clock()
            if (cf.cycle_id, service) in self.obs.directed:
                continue
            changed = self.obs.last_change(service, read=True)
            if changed >= cf.ts:
                # an outcome landed while we waited for advice: the evidence this cycle decided on
                # describes the service before that change, so the next cycle judges it afresh
                logger.info(
                    "meta_loop no directive service=%s cycle_id=%s reason=outcome_since_decision outcome_ts=%.3f",
                    service,
                    cf.cycle_id,
                    changed,
                )
                continue
            busy = self.obs.busy(service, now)
            if busy is not None:
                logger.info(
                    "meta_loop no directive service=%s cycle_id=%s reason=%s directive_id=%s plan_id=%s",
                    service,
                    cf.cycle_id,
                    busy.kind,
                    busy.directive_id,
                    busy.plan_id,
                )
                continue
            confidence, ml_advice, note = self._combine(service, cf, decision, advice)
            if not ml_advice.recommended_playbooks:
                # e.g. trust violations: nothing declarative applies, so the cycle informs (status, probes)
                # but directs nobody
                logger.info(
                    "meta_loop no directive service=%s cycle_id=%s reason=no_applicable_playbook", service, cf.cycle_id
                )
                continue
            directive = Directive(
                directive_id=f"dir_{cf.cycle_id}_{service}",
                cycle_id=cf.cycle_id,
                ts=now,
                service=service,
                focus_area=cf.focus_area,
                guardrail_level=cf.guardrail_level,
                ml_advice=ml_advice,
                confidence=confidence,
                time_budget_seconds=cf.time_budget_seconds,
                requires_verification=True,
            )
            if not await asyncio.to_thread(self._control.still_leader):
                self._leading = False
                logger.warning("meta_loop fenced before directive replica=%s cycle_id=%s", self.replica_id, cf.cycle_id)
                return
            payload = directive.model_dump(mode="json") | {"note": note, "epoch": self._control.epoch}
            try:
                await self._append("directive_issued", f"service:{service}", payload, cf.cycle_id)
            except LedgerFailed:
                return
            await self._publish(
                "directives", service, self._ser_directive(directive), ("directive", directive.directive_id)
            )
            self.obs._directive(
                directive.directive_id, cf.cycle_id, service, cf.focus_area, now, cf.time_budget_seconds
            )
            self.directives_issued.append(directive)
            logger.info(
                "meta_loop directive directive_id=%s service=%s focus=%s confidence=%.2f note=%r",
                directive.directive_id,
                service,
                cf.focus_area,
                confidence,
                note,
            )
