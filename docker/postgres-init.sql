-- Databases for MLflow's and Airflow's metadata beside the application database.
CREATE DATABASE mlflow OWNER reco;
CREATE DATABASE airflow OWNER reco;
