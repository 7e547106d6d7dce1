// A throwaway PKI made with the openssl CLI at test time (no key material is checked in):
// a CA, a server certificate for localhost / 127.0.0.1, and client certificates whose SAN
// is spiffe://chat.example/<workload>, the identities of config/callers.example.toml.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface Pair {
  cert: string;
  key: string;
}

export class Pki {
  readonly dir = mkdtempSync(join(tmpdir(), "chat-client-pki-"));
  readonly ca: Pair = { cert: join(this.dir, "ca.pem"), key: join(this.dir, "ca-key.pem") };

  constructor() {
    this.openssl([
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", this.ca.key, "-out", this.ca.cert, "-days", "1", "-subj", "/CN=chat test CA",
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ]);
  }

  server(name: string): Pair {
    return this.issue(name, "DNS:localhost,IP:127.0.0.1", "serverAuth");
  }

  client(workload: string): Pair {
    return this.issue(workload, `URI:spiffe://chat.example/${workload}`, "clientAuth");
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  private issue(name: string, san: string, usage: string): Pair {
    const pair = { cert: join(this.dir, `${name}.pem`), key: join(this.dir, `${name}-key.pem`) };
    const csr = join(this.dir, `${name}.csr`);
    const ext = join(this.dir, `${name}.ext`);
    writeFileSync(ext, `subjectAltName=${san}\nextendedKeyUsage=${usage}\nbasicConstraints=CA:FALSE\n`);
    this.openssl([
      "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", pair.key, "-out", csr, "-subj", `/CN=${name}`,
    ]);
    this.openssl([
      "x509", "-req", "-in", csr, "-CA", this.ca.cert, "-CAkey", this.ca.key, "-CAcreateserial",
      "-out", pair.cert, "-days", "1", "-extfile", ext,
    ]);
    return pair;
  }

  private openssl(args: string[]): void {
    execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  }
}
