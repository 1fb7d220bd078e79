#!/bin/bash
# Staging only (docker compose --profile staging): demo users in the realm, one per level of assurance, so
# that testers can log in without a national eID. Their eidas_loa attribute is what the brokers' mappers
# would have stored. Run again: existing users are left as they are.
set -euo pipefail
: "${DEMO_USER_PASSWORD:?set DEMO_USER_PASSWORD in .env to create the staging demo users}"
kcadm=/opt/keycloak/bin/kcadm.sh
$kcadm config credentials --server http://keycloak:8080 --realm master \
    --user "$KEYCLOAK_ADMIN_USERNAME" --password "$KEYCLOAK_ADMIN_PASSWORD"
add_user() {  # username first last email level [affiliation]
    if [ -n "$($kcadm get users -r baltic-ai-factory -q "username=$1" -q exact=true --fields id --format csv --noquotes)" ]; then
        echo "demo user $1 exists"; return
    fi
    local attributes="-s attributes.eidas_loa=[\"http://eidas.europa.eu/LoA/$5\"]"
    [ -n "${6:-}" ] && attributes="$attributes -s attributes.voperson_external_affiliation=[\"$6\"]"
    # shellcheck disable=SC2086
    $kcadm create users -r baltic-ai-factory -s "username=$1" -s "firstName=$2" -s "lastName=$3" -s "email=$4" \
        -s emailVerified=true -s enabled=true $attributes
    $kcadm set-password -r baltic-ai-factory --username "$1" --new-password "$DEMO_USER_PASSWORD"
    echo "demo user $1 ($5) created"
}
add_user anna.kowalska Anna Kowalska anna.kowalska@uw.example.eu substantial faculty@uw.edu.pl
add_user jonas.petrauskas Jonas Petrauskas jonas.petrauskas@vu.example.eu low member@vu.lt
add_user liis.tamm Liis Tamm liis.tamm@startup.example.ee high
add_user admin.ozola Admin Ozola admin.ozola@factory.example.eu high
add_user kadri.kask Kadri Kask kadri.kask@example.ee low
