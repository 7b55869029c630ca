/**
 * Errors of the vault format. Each names what went wrong in words an administrator can act on;
 * the classes let callers (the online-backup pipeline, the API) tell "wrong passphrase" from
 * "damaged data" from "someone else holds the lock" without matching message text.
 */

/** Base class: anything the vault format layer refuses or cannot read. */
export class VaultError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A MAC did not verify: the bytes were changed (bit rot, truncation, tampering) or the key is wrong. */
export class VaultIntegrityError extends VaultError {}

/** No key file in keys/ opens with the passphrase given. */
export class VaultPassphraseError extends VaultError {
  constructor() {
    super('wrong vault passphrase (no key in keys/ opens with it)');
  }
}

/** A file decrypted fine but does not have the structure restic's format prescribes. */
export class VaultFormatError extends VaultError {}
