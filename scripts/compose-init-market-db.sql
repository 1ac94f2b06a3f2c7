-- docker-compose: the market database and its owner, beside Airflow's metadata database.
CREATE USER market WITH PASSWORD 'market';
CREATE DATABASE market OWNER market;
