-- Run once by the postgres image when it initialises its database (see
-- docker-compose.yml): the role rexec-svc serves as, with the password the
-- server's pg_hba.conf asks for. `rexec-svc migrate`, connecting as the
-- owner (POSTGRES_USER), finds it and grants it what the service needs;
-- it never sets a password itself.
CREATE ROLE rexec_service WITH LOGIN PASSWORD 'rexec-service';
