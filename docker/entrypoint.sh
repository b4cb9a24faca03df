#!/bin/sh
# Refuse to start with development settings, then run the role given as the first argument.
set -e
python manage.py check --deploy --fail-level ERROR

case "$1" in
  web)
    python manage.py migrate --noinput
    exec gunicorn skinweb.wsgi:application --bind 0.0.0.0:8000 --workers "${WEB_CONCURRENCY:-3}" \
      --timeout 60 --access-logfile -
    ;;
  worker)
    exec celery -A skinweb worker -Q "${WORKER_QUEUES:-inference,default,explain}" --concurrency "${WORKER_CONCURRENCY:-1}" --loglevel INFO
    ;;
  beat)
    exec celery -A skinweb beat --loglevel INFO --schedule /tmp/celerybeat-schedule
    ;;
  *)
    exec "$@"
    ;;
esac
