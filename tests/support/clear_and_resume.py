"""Clear one failed task instance (with downstream) of a finished run and run it to the end.

What an operator does in the UI (Clear, downstream on, "only failed" off) and then what the
scheduler does, for an Airflow home whose runs come from ``airflow dags test`` (which can
only start a run afresh)::

    python -m tests.support.clear_and_resume <dag_id> <run_id> <task_id> <map_index>

The clear is Airflow's own (``find_relevant_relatives`` + ``SerializedDAG.clear`` +
``clear_task_instances``, what ``POST …/clearTaskInstances`` calls); the run then goes on
with the loop of ``dag.test`` (each scheduled instance takes a new try and runs in process).
Prints ``cleared: task_id[map_index] …`` and ``state: <the run's final state>``.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    dag_id, run_id, task_id, map_index = argv[0], argv[1], argv[2], int(argv[3])
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances, find_relevant_relatives
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    sdk_dag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(dag_id)
    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(sdk_dag))
    dag.on_success_callback = sdk_dag.on_success_callback
    dag.on_failure_callback = sdk_dag.on_failure_callback
    session = settings.Session()

    relatives = find_relevant_relatives(
        set(),
        {(task_id, map_index)},
        direction="downstream",
        dag=dag,
        run_id=run_id,
        session=session,
    )
    normal = {t for t in relatives if not isinstance(t, tuple)}
    mapped = {(task_id, map_index), *(t for t in relatives if isinstance(t, tuple))}
    markers = [*normal, *((t, m) for t, m in mapped if t not in normal)]
    tis = dag.clear(dry_run=True, task_ids=markers, run_id=run_id, session=session)
    print("cleared:", " ".join(sorted(f"{ti.task_id}[{ti.map_index}]" for ti in tis)), flush=True)
    clear_task_instances(list(tis), session, DagRunState.QUEUED)
    session.commit()

    dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    dr.dag = dag
    dr.state = DagRunState.RUNNING
    session.commit()
    import time

    deadline = time.monotonic() + 900
    while dr.state == DagRunState.RUNNING:
        if time.monotonic() > deadline:
            print("state: timed out", flush=True)
            return 1
        session.expire_all()
        schedulable, _ = dr.update_state(session=session)
        for ti in schedulable:
            if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        scheduled = [
            ti
            for ti in dr.get_task_instances(session=session)
            if ti.state == TaskInstanceState.SCHEDULED
        ]
        if not scheduled:
            time.sleep(1)  # what dag.test does: nothing runnable yet (a reschedule pending)
        for ti in scheduled:
            try:
                _run_task(ti=ti, task=sdk_dag.task_dict[ti.task_id])
            except Exception as exc:  # the instance's state says what happened
                print(f"task {ti.task_id}[{ti.map_index}] raised {exc!r}", file=sys.stderr)
    print(f"state: {dr.state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
