CREATE TABLE "admin_tokens" (
	"id" text PRIMARY KEY NOT NULL,
	"token_hash" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "admin_tokens_token_hash_unique" UNIQUE("token_hash")
);
--> statement-breakpoint
CREATE TABLE "agent_chunks" (
	"agent_id" text NOT NULL,
	"hash" text NOT NULL,
	CONSTRAINT "agent_chunks_agent_id_hash_pk" PRIMARY KEY("agent_id","hash")
);
--> statement-breakpoint
CREATE TABLE "agents" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"hostname" text DEFAULT '' NOT NULL,
	"secret_hash" text NOT NULL,
	"agent_version" text DEFAULT '' NOT NULL,
	"throttle" jsonb,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_seen_at" timestamp with time zone,
	"revoked_at" timestamp with time zone,
	CONSTRAINT "agents_name_unique" UNIQUE("name")
);
--> statement-breakpoint
CREATE TABLE "chunks" (
	"hash" text PRIMARY KEY NOT NULL,
	"pack" text NOT NULL,
	"offset" bigint NOT NULL,
	"size" integer NOT NULL,
	"stored_size" integer NOT NULL,
	"encoding" smallint NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "datasources" (
	"id" text PRIMARY KEY NOT NULL,
	"agent_id" text NOT NULL,
	"path" text NOT NULL,
	"kind" text NOT NULL,
	"block_size" integer NOT NULL,
	"compress" boolean DEFAULT true NOT NULL,
	"pre_script" text,
	"post_script" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "enrollment_tokens" (
	"id" text PRIMARY KEY NOT NULL,
	"token_hash" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"used_at" timestamp with time zone,
	"used_by_agent_id" text,
	CONSTRAINT "enrollment_tokens_token_hash_unique" UNIQUE("token_hash")
);
--> statement-breakpoint
CREATE TABLE "jobs" (
	"id" text PRIMARY KEY NOT NULL,
	"type" text NOT NULL,
	"state" text DEFAULT 'queued' NOT NULL,
	"agent_id" text NOT NULL,
	"datasource_id" text,
	"params" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"started_at" timestamp with time zone,
	"finished_at" timestamp with time zone,
	"bytes_scanned" bigint DEFAULT 0 NOT NULL,
	"bytes_sent" bigint DEFAULT 0 NOT NULL,
	"bytes_stored" bigint DEFAULT 0 NOT NULL,
	"blocks_sent" integer DEFAULT 0 NOT NULL,
	"files" integer DEFAULT 0 NOT NULL,
	"bytes_done" bigint DEFAULT 0 NOT NULL,
	"bytes_total" bigint,
	"warnings" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"error" text,
	"rp_id" text,
	"attempts" integer DEFAULT 0 NOT NULL,
	"interrupted_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "recovery_points" (
	"id" text PRIMARY KEY NOT NULL,
	"datasource_id" text NOT NULL,
	"job_id" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"tier" text DEFAULT 'disk' NOT NULL,
	"kind" text NOT NULL,
	"consistency" text NOT NULL,
	"bytes" bigint NOT NULL,
	"files" integer NOT NULL,
	"blocks" integer NOT NULL
);
--> statement-breakpoint
ALTER TABLE "agent_chunks" ADD CONSTRAINT "agent_chunks_agent_id_agents_id_fk" FOREIGN KEY ("agent_id") REFERENCES "public"."agents"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "datasources" ADD CONSTRAINT "datasources_agent_id_agents_id_fk" FOREIGN KEY ("agent_id") REFERENCES "public"."agents"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "enrollment_tokens" ADD CONSTRAINT "enrollment_tokens_used_by_agent_id_agents_id_fk" FOREIGN KEY ("used_by_agent_id") REFERENCES "public"."agents"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "jobs" ADD CONSTRAINT "jobs_agent_id_agents_id_fk" FOREIGN KEY ("agent_id") REFERENCES "public"."agents"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "jobs" ADD CONSTRAINT "jobs_datasource_id_datasources_id_fk" FOREIGN KEY ("datasource_id") REFERENCES "public"."datasources"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "recovery_points" ADD CONSTRAINT "recovery_points_datasource_id_datasources_id_fk" FOREIGN KEY ("datasource_id") REFERENCES "public"."datasources"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "chunks_pack" ON "chunks" USING btree ("pack");--> statement-breakpoint
CREATE UNIQUE INDEX "datasources_agent_path" ON "datasources" USING btree ("agent_id","path");--> statement-breakpoint
CREATE INDEX "jobs_state" ON "jobs" USING btree ("state");--> statement-breakpoint
CREATE INDEX "jobs_agent" ON "jobs" USING btree ("agent_id");--> statement-breakpoint
CREATE INDEX "recovery_points_ds" ON "recovery_points" USING btree ("datasource_id","created_at");