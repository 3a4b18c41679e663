"""The Flower ServerApp the coordinator runs: FedAvg over the nodes' updates (optionally SecAgg+
and client-side DP clipping), every round's contributions journaled, the final model written with
its provenance into the run's `output-dir` on the coordinator.

Flower's strategy API with the compatibility workflow: it is the path on which Flower 1.42 offers
SecAgg+, and it keeps each node's round metrics (who, which grant, how many patches) even when the
parameters themselves are only ever seen summed.
"""

from __future__ import annotations

import os
from typing import Any

from flwr.app import Context
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from slidebank.federated.journal import RUNS_ROOT_VARIABLE, RunJournal, node_report, run_folder
from slidebank.federated.model import build_model, get_weights, set_weights
from slidebank.federated.plan import TrainingPlan

Failure = tuple[ClientProxy, FitRes] | BaseException


class JournaledStrategy(Strategy):
    """Wraps the aggregation: records each node's report, and keeps out of the average any reply
    that trained nothing or carries anything but the model's own parameter arrays and the
    allowed metrics."""

    def __init__(self, inner: Strategy, journal: RunJournal, shapes: list[tuple[int, ...]]) -> None:
        self.inner = inner
        self.journal = journal
        self.shapes = shapes

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        for _, fit in instructions:
            fit.config["round"] = server_round
        return instructions

    def _admissible(self, result: FitRes) -> dict[str, Any] | None:
        report = node_report(dict(result.metrics))
        if report is None:
            return None
        shapes = [tuple(array.shape) for array in parameters_to_ndarrays(result.parameters)]
        return report if shapes == self.shapes else None

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Failure]) -> tuple[Parameters | None, dict[str, Scalar]]:
        reports, kept = [], []
        for proxy, result in results:
            report = self._admissible(result)
            if report is None:
                reports.append({"node": f"flower-node-{proxy.node_id}", "status": "rejected",
                                "reason": "the reply carried more than model parameters and round metrics"})
                continue
            report["flower_node_id"] = proxy.node_id
            reports.append(report)
            if report["status"] == "trained" and result.num_examples > 0:
                kept.append((proxy, result))
        failed = [str(f if isinstance(f, BaseException) else f[1].status.message)[:300] for f in failures]
        self.journal.record_round(server_round, reports, failed)
        if not kept:
            return None, {}  # nobody trained: the model stays as it was
        return self.inner.aggregate_fit(server_round, kept, [])

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # held-out evaluation is the owner's, on data of their choosing (`slidebank federated evaluate`)

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]
                           ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    plan = TrainingPlan.from_run_config(context.run_config)
    model = build_model(plan.model, len(plan.classes), plan.seed)
    options = {"strategy": "FedAvg", "secure_aggregation": plan.secure_aggregation,
               "dp_clipping_norm": plan.dp_clipping_norm, "dp_noise_multiplier": plan.dp_noise_multiplier}
    output = run_folder(str(context.run_config["output-dir"]), os.environ.get(RUNS_ROOT_VARIABLE))
    journal = RunJournal(output, context.run_id, plan, options)
    weights = get_weights(model)
    strategy: Strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=plan.min_nodes,
                                min_evaluate_clients=0, min_available_clients=plan.min_nodes,
                                initial_parameters=ndarrays_to_parameters(weights))
    if plan.dp_clipping_norm > 0:
        strategy = DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=plan.dp_noise_multiplier,
                                                              clipping_norm=plan.dp_clipping_norm,
                                                              num_sampled_clients=plan.min_nodes)
    journaled = JournaledStrategy(strategy, journal, [tuple(w.shape) for w in weights])
    legacy = LegacyContext(context=context, strategy=journaled,
                           config=ServerConfig(num_rounds=plan.rounds, round_timeout=plan.round_timeout))
    fit_workflow = None
    if plan.secure_aggregation:
        fit_workflow = SecAggPlusWorkflow(num_shares=plan.min_nodes, reconstruction_threshold=max(2, plan.min_nodes - 1),
                                          timeout=plan.round_timeout)
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    set_weights(model, legacy.state.array_records["parameters"].to_numpy_ndarrays())
    journal.finish(model, "completed")
