# The image docker-compose.yaml runs: Airflow 3.3.2 plus this package's pinned dependencies.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /requirements.txt
RUN pip install --no-cache-dir -r /requirements.txt
COPY --chown=airflow:0 include /opt/airflow/include
# Compiled once here, so no task process compiles the package from source (the image's Python
# may not be allowed to write .pyc files at run time).
RUN python -m compileall -q /opt/airflow/include
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
ENV PYTHONPATH=/opt/airflow/include:/opt/airflow/plugins
