#!/bin/sh
# Back up the portal's PostgreSQL database (pg_dump -Fc) and, when BACKUP_HUB_DATA names a folder, the hub's home
# volume (tar.gz); delete backups older than BACKUP_RETENTION_DAYS; record the success for monitoring.
#
#   backup.sh            one backup, exit non-zero if it failed
#   backup.sh --loop     one backup now, then one every BACKUP_INTERVAL_SECONDS (the compose `backup` service)
#
# The database is named by libpq's variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE).
# After each success it writes, atomically:
#   $BACKUP_DIR/last-success                         the Unix time of the success
#   $BACKUP_DIR/metrics/portal_backup.prom           portal_backup_last_success_timestamp_seconds and the sizes,
#                                                    in Prometheus' text format (node_exporter's textfile collector
#                                                    or any exporter reading that folder serves it)
# A failed run changes neither file, so the timestamp ages and the "backups missing" alert fires.
# docs/deployment.md, "Backups and restore", describes the restore.
set -eu

BACKUP_DIR=${BACKUP_DIR:-/backups}
BACKUP_RETENTION_DAYS=${BACKUP_RETENTION_DAYS:-14}
BACKUP_INTERVAL_SECONDS=${BACKUP_INTERVAL_SECONDS:-86400}
BACKUP_HUB_DATA=${BACKUP_HUB_DATA:-}

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) backup: $*"; }
failed() { rm -f "$BACKUP_DIR"/*.partial; log "FAILED $*"; }

backup_once() {
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$BACKUP_DIR/metrics"
    dump="$BACKUP_DIR/portal-$stamp.dump"
    pg_dump --format=custom --no-owner --file="$dump.partial" || return 1
    # A dump pg_restore cannot read is no backup.
    pg_restore --list "$dump.partial" >/dev/null || return 1
    mv "$dump.partial" "$dump"
    dump_bytes=$(wc -c <"$dump")
    hub_bytes=0
    if [ -n "$BACKUP_HUB_DATA" ]; then
        archive="$BACKUP_DIR/hub-data-$stamp.tar.gz"
        tar -czf "$archive.partial" -C "$BACKUP_HUB_DATA" . || return 1
        mv "$archive.partial" "$archive"
        hub_bytes=$(wc -c <"$archive")
    fi
    # Retention only after a success: the newest backup is never deleted, however old.
    find "$BACKUP_DIR" -maxdepth 1 -type f \( -name 'portal-*.dump' -o -name 'hub-data-*.tar.gz' \) \
        -mmin +$((BACKUP_RETENTION_DAYS * 1440)) -print -delete | sed 's/^/removed /'
    now=$(date +%s)
    metrics="$BACKUP_DIR/metrics/portal_backup.prom"
    {
        echo "# HELP portal_backup_last_success_timestamp_seconds Unix time of the last successful backup."
        echo "# TYPE portal_backup_last_success_timestamp_seconds gauge"
        echo "portal_backup_last_success_timestamp_seconds $now"
        echo "# HELP portal_backup_last_size_bytes Size of the last successful backup's files."
        echo "# TYPE portal_backup_last_size_bytes gauge"
        echo "portal_backup_last_size_bytes{part=\"database\"} $dump_bytes"
        echo "portal_backup_last_size_bytes{part=\"hub_data\"} $hub_bytes"
    } >"$metrics.tmp"
    mv "$metrics.tmp" "$metrics"
    echo "$now" >"$BACKUP_DIR/last-success.tmp"
    mv "$BACKUP_DIR/last-success.tmp" "$BACKUP_DIR/last-success"
    log "ok: $dump ($dump_bytes bytes)${BACKUP_HUB_DATA:+, hub data $hub_bytes bytes}"
}

if [ "${1:-}" = "--loop" ]; then
    trap 'log "stopped"; exit 0' TERM INT
    while true; do
        backup_once || failed "(the last success stays recorded in $BACKUP_DIR/last-success)"
        sleep "$BACKUP_INTERVAL_SECONDS" &
        wait $!
    done
fi
backup_once || { failed; exit 1; }
