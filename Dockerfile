# The image docker-compose.yaml runs: Airflow 3.3.2, this project's pinned dependencies (the
# Celery path included), the market_pipeline package (so `market-recovery` exists), the DAGs,
# the plugins and the task-parent preload. One build is the code of every container.
FROM apache/airflow:3.3.2-python3.11

COPY requirements.txt requirements-celery.txt /opt/market/
RUN pip install --no-cache-dir -r /opt/market/requirements.txt -r /opt/market/requirements-celery.txt

# The domain package, installed (not on PYTHONPATH): its migrations and data files come along.
COPY --chown=airflow:0 pyproject.toml /opt/market/src/pyproject.toml
COPY --chown=airflow:0 include /opt/market/src/include
RUN pip install --no-cache-dir --no-deps /opt/market/src
# numba's on-disk cache of the indicator kernel, which the task parents' preload loads.
RUN python -c "from market_pipeline import indicators; indicators.warm_jit()"

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
# $AIRFLOW_HOME/config is where the scheduler and every Celery worker import it from: it
# preloads GX, pandas and the gate engine so forked tasks inherit them (docs/deploy.md).
COPY --chown=airflow:0 config/airflow_local_settings.py /opt/airflow/config/airflow_local_settings.py

# Compiled once here, so no task process compiles the code from source (the image's Python
# may not be allowed to write .pyc files at run time). pip compiled the installed packages.
RUN python -m compileall -q /opt/airflow/dags /opt/airflow/plugins /opt/airflow/config

ENV PYTHONPATH=/opt/airflow/plugins
