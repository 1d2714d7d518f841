# One image for the project's services, MLflow and Airflow: Python + Java (Spark) + the JDBC driver.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless libpostgresql-jdbc-java \
      git curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# No JAVA_HOME: its path names the architecture (amd64, arm64); Spark finds `java` on PATH.
# The JDBC jar is the one libpostgresql-jdbc-java installs; the migrations are the ones copied
# below (the installed package has no sql/ beside it).
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RECO_JDBC_DRIVER_PATH=/usr/share/java/postgresql.jar \
    RECO_SQL_DIR=/app/sql \
    RECO_STATE_DIR=/var/lib/reco

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY reco ./reco
COPY serving ./serving
COPY streaming ./streaming
COPY spark_jobs ./spark_jobs
RUN pip install .
# The ranking's compiled pass (numba) is built into the image once: services load it (~1 s)
# instead of compiling it (~7 s of CPU) at every container start. Run from / so that it is the
# installed package that gets compiled (the cache is per source file), not ./reco.
ENV NUMBA_CACHE_DIR=/var/cache/reco/numba
RUN cd / && python -c "from reco.scoring import warm_up; warm_up()"
COPY dags ./dags
COPY sql ./sql

# The MLflow artifact volume mounts on a folder that exists and belongs to reco, so Docker
# creates the volume with that owner (a missing mount point would be created root-owned).
RUN useradd --create-home --uid 1000 reco && mkdir -p /var/lib/reco/mlflow-artifacts \
 && chown -R reco /var/lib/reco /var/cache/reco
USER reco
CMD ["reco", "--help"]
