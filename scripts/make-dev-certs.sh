#!/bin/sh
# Development certificates for the example channels (secure mail), made with openssl into
# config/tls/: a development CA, the SMTP listener's STARTTLS certificate, the platform's S/MIME
# identity and the example professionals of config/providers.yaml. Existing files are kept;
# delete config/tls/dev-* to start over. Never use these outside development.
set -eu
cd "$(dirname "$0")/.."
DIR=config/tls
DAYS=825
mkdir -p "$DIR"
umask 077

ca() {
    [ -f "$DIR/dev-ca.pem" ] && return 0
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
        -keyout "$DIR/dev-ca.key" -out "$DIR/dev-ca.pem" \
        -subj "/O=Passerelle development/CN=Passerelle Dev Health CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# leaf NAME SUBJECT EXTENSIONS: an RSA key and a certificate signed by the development CA
leaf() {
    [ -f "$DIR/$1.pem" ] && return 0
    ext=$(mktemp)
    printf 'basicConstraints=critical,CA:FALSE\nsubjectKeyIdentifier=hash\n%s\n' "$3" > "$ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$DIR/$1.key" -subj "$2" 2>/dev/null |
        openssl x509 -req -sha256 -days "$DAYS" -CA "$DIR/dev-ca.pem" -CAkey "$DIR/dev-ca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -extfile "$ext" -out "$DIR/$1.pem" 2>/dev/null
    rm -f "$ext"
}

smime() {  # leaf for S/MIME: signing and key encipherment, the address in the SAN
    leaf "$1" "/O=Passerelle development/CN=$2" \
        "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=emailProtection
subjectAltName=email:$3"
}

ca
leaf dev-smtp "/O=Passerelle development/CN=localhost" \
    "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
smime dev-platform "Passerelle secure mail" relay@secure.passerelle.example
smime dev-gp-anne "Dr Anne Example" anne.example@gp.example
smime dev-cardio-marc "Dr Marc Example" marc.example@cardio.example
chmod 644 "$DIR"/dev-*.pem
echo "development certificates are in $DIR/"
