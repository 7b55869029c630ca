CREATE TABLE "vault_blobs" (
	"id" text NOT NULL,
	"type" text NOT NULL,
	"pack_id" text NOT NULL,
	"offset" bigint NOT NULL,
	"length" integer NOT NULL,
	"uncompressed_length" integer,
	CONSTRAINT "vault_blobs_id_type_pk" PRIMARY KEY("id","type")
);
--> statement-breakpoint
CREATE TABLE "vault_packs" (
	"id" text PRIMARY KEY NOT NULL,
	"type" text NOT NULL,
	"size" bigint NOT NULL,
	"index_id" text,
	"pending_entries" jsonb,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "vaults" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text DEFAULT 'default' NOT NULL,
	"backend" jsonb NOT NULL,
	"passphrase_file" text NOT NULL,
	"repository_id" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "vaults_name_unique" UNIQUE("name")
);
--> statement-breakpoint
ALTER TABLE "recovery_points" ADD COLUMN "snapshot_id" text;--> statement-breakpoint
ALTER TABLE "recovery_points" ADD COLUMN "source_rp_id" text;--> statement-breakpoint
ALTER TABLE "recovery_points" ADD COLUMN "group_name" text;--> statement-breakpoint
ALTER TABLE "recovery_points" ADD COLUMN "deleted_at" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "vault_blobs_pack" ON "vault_blobs" USING btree ("pack_id");--> statement-breakpoint
CREATE INDEX "recovery_points_snapshot" ON "recovery_points" USING btree ("snapshot_id");