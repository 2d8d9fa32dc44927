"""The advisor service: one MLAdvice per CycleFocus, signed before it is published.

Reads (one group-less consumer, so no group-join delay):

* ``<prefix>cycles`` -- each ``CycleFocus`` published after this service started
  (by record timestamp; older ones were answered or are too stale to matter);
* ``<prefix>anomalies`` / ``<prefix>health`` -- buffered by event time, so a
  cycle's evidence is whatever the streams emitted in the ``ml.lookback_seconds``
  before it;
* ``<prefix>outcomes`` -- a *trigger* only: the outcome is looked up in the ledger
  (``replay_cycle``) and learned from the verified ``execution_outcome`` entry, so a
  forged record on the outcomes topic teaches nothing.

On start, state is rebuilt from ``get_signed_outcomes`` (the ledger is the training
data); the symptom features each outcome's cycle was advised with are read back
from that cycle's ``advice_provided`` entry, which is why they are signed into it.

Advisors never act. The only producer here is an :class:`AdviceProducer`, which
refuses every topic but ``<prefix>advice``; advisor failures and garbage output are
contained (logged, clamped, or dropped from the advice) and can never reach any
other topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from metaheal.agents.advisors.anomaly import AnomalyAdvisor
from metaheal.agents.advisors.base import (
    Advisor,
    AdvisorOutput,
    CycleContext,
    Outcome,
    clamp01,
)
from metaheal.agents.advisors.knowledge_map import KnowledgeMap
from metaheal.agents.advisors.playbook_ranker import PlaybookLike, PlaybookRanker
from metaheal.agents.advisors.root_cause import RootCauseSuggester, closure
from metaheal.agents.common.baselines import Reference, against_reference
from metaheal.agents.common.graph import ServiceGraph, related
from metaheal.agents.common.outcomes import hollow_successes, symptom_recovered
from metaheal.agents.common.playbooks import load_playbooks
from metaheal.agents.common.policy import Policies
from metaheal.config import Settings
from metaheal.errors import AdvisorActionForbidden, DecodeError
from metaheal.events import (
    AnomalyScore,
    CycleFocus,
    HealthWindow,
    MLAdvice,
    RankedPlaybook,
    Recommendation,
    RootCauseCandidate,
    SignedOutcome,
)
from metaheal.kafka import Consumer, KafkaUnavailable, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger import ImmutableLog
from metaheal.ledger.authz import SELF_HEAL, SUBSYSTEM

logger = logging.getLogger(__name__)

ACTOR = "ml_advisors"
#: Remembered cycles (features for online learning) and buffered evidence per service.
MAX_CYCLES = 2000
MAX_EVENTS_PER_SERVICE = 5000
#: How long an outcome seen on the topic may wait for its signed ledger entry before it is dropped.
OUTCOME_WAIT_SECONDS = 30.0


class AdviceProducer:
    """A producer that can only publish ``MLAdvice`` to ``<prefix>advice``.

    The topic is derived from settings here, not passed in, so no caller can point
    it at directives, plans or approvals.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.name("advice")
        self._producer: Producer | None = Producer(settings.kafka)
        self._serialize = AvroSerializer(MLAdvice)

    def send(self, topic: str, value: bytes, key: str) -> None:
        if topic != self.topic:
            raise AdvisorActionForbidden(f"advisors may only publish to {self.topic}, not {topic}")
        if self._producer is None:
            raise KafkaUnavailable("advice producer is closed")
        self._producer.send(topic, value, key=key)

    async def publish(self, advice: MLAdvice) -> None:
        if not isinstance(advice, MLAdvice):
            raise AdvisorActionForbidden(f"advisors may only publish MLAdvice, not {type(advice).__name__}")
        await asyncio.to_thread(self.send, self.topic, self._serialize(advice), advice.cycle_id)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None  # release the client now, not whenever the service is collected


def default_advisors(settings: Settings, playbooks: Mapping[str, PlaybookLike]) -> list[Advisor]:
    ml = settings.ml
    km = KnowledgeMap.load(ml.knowledge_map) if ml.knowledge_map else KnowledgeMap.default()
    graph = {s.name: list(s.dependencies) for s in settings.services}
    return [
        AnomalyAdvisor(settings.streams.anomaly_threshold, settings.streams.reporting_floor),
        RootCauseSuggester(
            km,
            graph,
            unknown_below=ml.unknown_below,
            learned_weight_halfway=ml.learned_weight_halfway,
            playbook_causes={name: list(pb.applies_to.root_causes) for name, pb in playbooks.items()},
        ),
        PlaybookRanker(
            playbooks,
            settings.guardrails,
            policy=Policies(settings).playbook_denied,
            prior_pseudo_count=ml.prior_pseudo_count,
            half_life_hours=ml.outcome_half_life_hours,
            explore=ml.explore,
            seed=ml.seed,
        ),
    ]


def _sanitize(name: str, out: Any) -> AdvisorOutput:
    """Keep only well-formed parts of an advisor's output; clamp what can be clamped."""
    if not isinstance(out, AdvisorOutput):
        return AdvisorOutput(evidence=[f"{name} returned {type(out).__name__}, ignored"])
    clean = AdvisorOutput(confidence=clamp01(out.confidence))
    for r in out.recommendations:
        try:
            clean.recommendations.append(Recommendation.model_validate(r, from_attributes=True))
        except ValidationError:
            clean.evidence.append(f"{name}: malformed recommendation dropped")
    for c in out.candidates:
        try:
            clean.candidates.append(
                RootCauseCandidate(
                    cause=str(c.cause),
                    probability=clamp01(c.probability),
                    service=c.service,
                    evidence=[str(e) for e in c.evidence][:20],
                )
            )
        except (ValidationError, AttributeError, TypeError):
            clean.evidence.append(f"{name}: malformed root-cause candidate dropped")
    for item in out.ranked:
        try:
            pb, score, conf = item
            if not math.isfinite(float(score)):
                raise ValueError("score not finite")
            clean.ranked.append((str(pb), float(score), clamp01(conf)))
        except (TypeError, ValueError):
            clean.evidence.append(f"{name}: malformed ranked playbook dropped")
    clean.evidence.extend(str(e) for e in out.evidence[:50])
    return clean


class AdvisorService:
    """Long-running: ``await AdvisorService(settings).run(stop)``."""

    def __init__(
        self,
        settings: Settings,
        *,
        log: ImmutableLog | None = None,
        playbooks: Mapping[str, PlaybookLike] | None = None,
        advisors: list[Advisor] | None = None,
        poll_timeout: float = 0.2,
    ) -> None:
        self.settings = settings
        if playbooks is None:
            playbooks = load_playbooks(settings.playbooks)
        self.playbooks = playbooks
        self.advisors = advisors if advisors is not None else default_advisors(settings, playbooks)
        self._log = log
        self._owns_log = log is None
        self.poll_timeout = poll_timeout
        self.producer = AdviceProducer(settings)
        self.ready = asyncio.Event()
        self.advised = 0
        self.unsigned = 0
        self.learned: set[str] = set()
        self._services = ServiceGraph(settings)
        self._graph_now: dict[str, list[str]] = self._services.graph
        self._cycle_features: OrderedDict[str, dict[str, dict[str, float]]] = OrderedDict()
        self._anomalies: dict[str, deque[AnomalyScore]] = {}
        self._health: dict[str, deque[HealthWindow]] = {}
        self._pending_outcomes: list[tuple[SignedOutcome, float]] = []
        self._outcome_ts: dict[str, float] = {}  # service -> latest outcome's ts (every outcome read, old ones too)
        self._reference: Reference = {}  # per signal: the baseline of its last healthy window (as the meta loop)
        self._de_cycle = AvroDeserializer(CycleFocus)
        self._de_anomaly = AvroDeserializer(AnomalyScore)
        self._de_health = AvroDeserializer(HealthWindow)
        self._de_outcome = AvroDeserializer(SignedOutcome)
        t = settings.topics.name
        self.topics = {
            "cycles": t("cycles"),
            "anomalies": t("anomalies"),
            "health": t("health"),
            "outcomes": t("outcomes"),
        }

    @property
    def log(self) -> ImmutableLog:
        if self._log is None:
            self._log = ImmutableLog(self.settings)
        return self._log

    # -- learning from the ledger ----------------------------------------------------------------

    async def _features_of_cycle(self, cycle_id: str) -> dict[str, dict[str, float]] | None:
        if cycle_id in self._cycle_features:
            return self._cycle_features[cycle_id]
        for entry in await self.log.replay_cycle(cycle_id):
            if entry.action == "advice_provided" and entry.actor == ACTOR:
                feats = json.loads(entry.payload).get("features")
                if isinstance(feats, dict):
                    self._remember(cycle_id, feats)
                    return feats
        return None

    def _remember(self, cycle_id: str, feats: dict[str, dict[str, float]]) -> None:
        self._cycle_features[cycle_id] = feats
        self._cycle_features.move_to_end(cycle_id)
        while len(self._cycle_features) > MAX_CYCLES:
            self._cycle_features.popitem(last=False)

    async def learn_from_entry(self, entry: Any, *, hollow: frozenset[str] | set[str] = frozenset()) -> bool:
        """Learn from one verified ``execution_outcome`` ledger entry; False if already learned.

        A success whose symptom did not recover (its ``symptom`` verdict, or ``hollow`` from
        :func:`~metaheal.agents.common.outcomes.hollow_successes` on a replay) is no evidence: skipped."""
        try:
            payload = json.loads(entry.payload)
            outcome = Outcome.from_payload(payload, cycle_id=entry.cycle_id)
        except (ValueError, TypeError) as exc:
            logger.warning("advisor outcome_skipped sequence=%s reason=%s", entry.sequence, exc)
            return False
        if outcome.outcome_id in self.learned:
            return False
        self.learned.add(outcome.outcome_id)
        if outcome.result == "success" and (outcome.outcome_id in hollow or symptom_recovered(payload) is False):
            logger.info(
                "advisor outcome_not_evidence outcome=%s playbook=%s: recorded as success, symptom did not recover",
                outcome.outcome_id,
                outcome.playbook,
            )
            return False
        feats = await self._features_of_cycle(outcome.cycle_id) if outcome.cycle_id else None
        for advisor in self.advisors:
            try:
                advisor.learn(outcome, feats)
            except Exception:  # one advisor's bug must not stop the others learning
                logger.exception("advisor learn_failed advisor=%s outcome=%s", advisor.name, outcome.outcome_id)
        logger.info(
            "advisor learned outcome=%s service=%s playbook=%s result=%s features=%s",
            outcome.outcome_id,
            outcome.service,
            outcome.playbook,
            outcome.result,
            feats is not None,
        )
        return True

    async def rebuild(self) -> int:
        """Replay signed outcomes from the ledger, oldest first; returns how many were learned."""
        entries = await self.log.get_signed_outcomes(hours_back=self.settings.ml.replay_hours, limit=100_000)
        entries = sorted(entries, key=lambda e: e.sequence)
        hollow = hollow_successes(entries)
        n = 0
        for e in entries:
            n += await self.learn_from_entry(e, hollow=hollow)
        logger.info("advisor rebuilt outcomes=%d", n)
        return n

    async def _on_outcome(self, outcome: SignedOutcome) -> bool:
        """Learn the outcome only once the ledger holds its signed record."""
        if outcome.outcome_id in self.learned:
            return True
        for entry in await self.log.replay_cycle(outcome.cycle_id):
            if entry.action == "execution_outcome":
                try:
                    oid = json.loads(entry.payload).get("outcome_id")
                except ValueError:
                    continue
                if oid == outcome.outcome_id:
                    await self.learn_from_entry(entry)
                    return True
        return False

    @property
    def _graph(self) -> dict[str, list[str]]:
        """The dependency graph of ``settings.services`` as it is now: ``metaheal up`` merges services
        registered after start into the same settings, and the root-cause suggester gets the new graph too."""
        if self._services.graph is not self._graph_now:
            self._graph_now = self._services.graph
            for advisor in self.advisors:
                if isinstance(advisor, RootCauseSuggester):
                    advisor.graph = self._graph_now
        return self._graph_now

    # -- evidence ---------------------------------------------------------------------------------

    def _buffer(self, store: dict[str, deque[Any]], service: str, event: Any) -> None:
        store.setdefault(service, deque(maxlen=MAX_EVENTS_PER_SERVICE)).append(event)

    def context(self, focus: CycleFocus) -> CycleContext:
        """The cycle's evidence: focus services, their dependencies, within the lookback window."""
        lo, hi = focus.ts - self.settings.ml.lookback_seconds, focus.ts + self.settings.streams.window_seconds
        services = list(focus.target_services)
        if not services:  # no target named: the services with the strongest anomalies in the window
            best: dict[str, float] = {}
            for svc, events in self._anomalies.items():
                for a in events:
                    if lo <= a.ts <= hi and a.crossed:
                        best[svc] = max(best.get(svc, 0.0), a.score)
            services = sorted(best, key=lambda s: (-best[s], s))[:3]
        scope = set(services)
        for s in services:
            scope |= closure(self._graph, s)
        since = {s: self.changed_at(s) for s in sorted(scope)}
        # evidence from before an outcome on a related service describes a system that has since changed
        anomalies = [
            a
            for s in sorted(scope)
            for a in self._anomalies.get(s, ())
            if lo <= a.ts <= hi and min(a.ts, a.window_start) >= since[s]
        ]
        health = [
            w
            for s in sorted(scope)
            for w in self._health.get(s, ())
            if lo <= w.window_end <= hi and w.window_start >= since[s]
        ]
        return CycleContext(focus=focus, services=services, anomalies=anomalies, health=health, changed_at=since)

    def observe(self, event: AnomalyScore | HealthWindow) -> None:
        """Buffer one piece of evidence (what the loop does with every anomaly and health window).

        Health windows are judged against the baseline of their signal's last healthy window, as
        the meta loop judges them: the streams baseline learns a persisting fault within a few
        windows, and a cycle decided on that fault would get advice that no longer sees it.
        """
        if isinstance(event, HealthWindow):
            event = against_reference(self._reference, event, self.settings.streams.window_seconds)
            self._buffer(self._health, event.service, event)
        else:
            self._buffer(self._anomalies, event.service, event)

    def observe_outcome(self, o: SignedOutcome) -> None:
        """Note when ``o.service`` last changed; learning waits for the signed ledger entry."""
        self._outcome_ts[o.service] = max(self._outcome_ts.get(o.service, 0.0), o.ts)

    def changed_at(self, service: str) -> float:
        """The latest outcome on ``service``, on what it calls or on what calls it (a caller's failover
        or cache warm changes what reaches it): the meta loop's rule for stale evidence."""
        return max((self._outcome_ts.get(s, 0.0) for s in related(service, self._graph)), default=0.0)

    # -- advice -----------------------------------------------------------------------------------

    def compose(self, focus: CycleFocus, ctx: CycleContext | None = None) -> tuple[MLAdvice, CycleContext]:
        """Run every advisor on the cycle (contained), and assemble the advice."""
        _ = self._graph  # refresh the graph before any advisor reads it
        ctx = ctx or self.context(focus)
        outs: dict[str, AdvisorOutput] = {}
        for advisor in self.advisors:
            try:
                raw = advisor.advise(ctx)
            except Exception as exc:
                logger.exception("advisor failed advisor=%s cycle=%s", advisor.name, focus.cycle_id)
                raw = AdvisorOutput(evidence=[f"{advisor.name} failed: {type(exc).__name__}: {exc}"])
            outs[advisor.name] = _sanitize(advisor.name, raw)
        ranked = sorted(
            ((n, clamp01(s), c) for o in outs.values() for n, s, c in o.ranked if n in self.playbooks),
            key=lambda r: -r[1],
        )
        unknown = sorted({n for o in outs.values() for n, _, _ in o.ranked if n not in self.playbooks})
        if unknown:  # an advisor may only rank playbooks that exist
            outs[next(iter(outs))].evidence.append(f"dropped unknown playbook(s): {', '.join(unknown)}")
        advice = MLAdvice(
            cycle_id=focus.cycle_id,
            ts=time.time(),
            recommendations=[r for o in outs.values() for r in o.recommendations],
            confidence_scores={name: o.confidence for name, o in outs.items()},
            root_cause_candidates=[c for o in outs.values() for c in o.candidates],
            ranked_playbooks=[RankedPlaybook(name=n, score=s, confidence=c) for n, s, c in ranked],
            evidence=[e for o in outs.values() for e in o.evidence],
        )
        return advice, ctx

    async def advise(self, focus: CycleFocus) -> MLAdvice | None:
        """Compose, sign (``advice_provided``), then publish; nothing is published unsigned.

        A cycle already advised by this process (a re-published CycleFocus) is skipped.
        """
        if focus.cycle_id in self._cycle_features:
            logger.info("advisor duplicate_cycle cycle=%s skipped", focus.cycle_id)
            return None
        advice, ctx = await asyncio.to_thread(self.compose, focus)
        payload = {
            **advice.model_dump(mode="json", exclude={"evidence"}),
            # the design's summary keys, next to the full lists they summarise
            "root_causes": [c.cause for c in advice.root_cause_candidates],
            "top_playbooks": [p.name for p in advice.ranked_playbooks[:3]],
            "primary_service": ctx.primary_service,
            "diagnosis": ctx.diagnosis,
            "features": ctx.features,
        }
        try:
            await self.log.append(
                actor=ACTOR,
                action="advice_provided",
                resource=SELF_HEAL,
                subsystem=SUBSYSTEM,
                payload=payload,
                result="advised",
                cycle_id=focus.cycle_id,
            )
        except KafkaUnavailable as exc:  # LedgerUnavailable is a subclass: unsigned advice is not advice
            logger.error("advisor advice_not_signed cycle=%s error=%s", focus.cycle_id, exc)
            self.unsigned += 1
            return None
        self._remember(focus.cycle_id, ctx.features)
        await self.producer.publish(advice)
        self.advised += 1
        top = advice.root_cause_candidates[0].cause if advice.root_cause_candidates else "-"
        best = advice.ranked_playbooks[0].name if advice.ranked_playbooks else "-"
        logger.info(
            "advisor advice_published cycle=%s focus=%s services=%s root_cause=%s playbook=%s",
            focus.cycle_id,
            focus.focus_area,
            ",".join(ctx.services),
            top,
            best,
        )
        return advice

    # -- loop -------------------------------------------------------------------------------------

    def _dispatch(self, msg: Any, started_ms: int, cycles: list[CycleFocus]) -> None:
        topic, value = msg.topic(), msg.value()
        try:
            if topic == self.topics["anomalies"]:
                a = self._de_anomaly(value)
                self._buffer(self._anomalies, a.service, a)
            elif topic == self.topics["health"]:
                self.observe(self._de_health(value))
            elif topic == self.topics["outcomes"]:
                o = self._de_outcome(value)
                self.observe_outcome(o)
                if msg.timestamp()[1] >= started_ms:  # older ones were replayed from the ledger
                    self._pending_outcomes.append((o, time.monotonic() + OUTCOME_WAIT_SECONDS))
            elif msg.timestamp()[1] < started_ms:
                return  # cycles from before this start: answered already
            elif topic == self.topics["cycles"]:
                cycles.append(self._de_cycle(value))
        except DecodeError as exc:
            # Not ours to dead-letter (the producers' consumers do); skip with the reason.
            logger.warning("advisor skipped_record topic=%s offset=%s error=%s", topic, msg.offset(), exc)

    async def _drain_outcomes(self) -> None:
        pending, self._pending_outcomes = self._pending_outcomes, []
        for outcome, deadline in pending:
            try:
                found = await self._on_outcome(outcome)
            except KafkaUnavailable as exc:
                logger.warning("advisor outcome_lookup_failed outcome=%s error=%s", outcome.outcome_id, exc)
                found = False
            if not found:
                if time.monotonic() < deadline:
                    self._pending_outcomes.append((outcome, deadline))
                else:
                    logger.warning(
                        "advisor outcome_unverified outcome=%s: no signed ledger entry, not learned", outcome.outcome_id
                    )

    async def run(self, stop: asyncio.Event) -> None:
        started_ms = int(time.time() * 1000) - 1000
        consumer = Consumer(self.settings.kafka)
        try:
            await asyncio.to_thread(consumer.assign_topics, self.topics.values())
            while not stop.is_set():
                try:
                    await self.rebuild()
                    break
                except KafkaUnavailable as exc:  # the ledger is the training data: wait for it
                    logger.warning("advisor rebuild_failed error=%s; retrying", exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=2.0)
            if stop.is_set():
                return
            self.ready.set()
            logger.info("advisor ready topics=%s", ",".join(self.topics.values()))
            next_drain = 0.0
            while not stop.is_set():
                msgs = await asyncio.to_thread(consumer.poll_batch, 1000, self.poll_timeout)
                cycles: list[CycleFocus] = []
                for m in msgs:
                    self._dispatch(m, started_ms, cycles)
                for focus in cycles:  # after the batch, so evidence in the same batch is buffered
                    if stop.is_set():
                        break
                    await self.advise(focus)
                if self._pending_outcomes and time.monotonic() >= next_drain:
                    await self._drain_outcomes()
                    next_drain = time.monotonic() + 1.0
        finally:
            await asyncio.to_thread(consumer.close)
            self.producer.close()
            if self._owns_log and self._log is not None:
                self._log.close()
