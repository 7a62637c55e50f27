//! `brainstemctl learning …`: the online model's counters, queue and accuracy, and a prediction
//! (docs/LEARNING.md).

use brainstem_client::v1::{LearningStatsRequest, PredictRequest};
use brainstem_client::{ConnectOptions, exit};
use clap::Subcommand;
use serde_json::json;

use super::{CliError, Output, print};

#[derive(Subcommand)]
pub enum LearningCommand {
    /// Events learned, duplicates, the pending queue, pause state and rolling accuracy (needs
    /// learning.read).
    Stats,
    /// The model's probability of class 1 for a feature vector (needs learning.read).
    Predict {
        /// Comma-separated features, e.g. 0.5,-1,2.25.
        #[arg(value_name = "FEATURES", allow_hyphen_values = true)]
        features: String,
    },
}

fn parse_features(text: &str) -> Result<Vec<f64>, CliError> {
    text.split(',')
        .map(|part| {
            part.trim().parse::<f64>().map_err(|_| {
                CliError::Local(format!("{part:?} is not a number (FEATURES: 0.5,-1,2)"))
            })
        })
        .collect()
}

pub async fn learning(
    options: &ConnectOptions,
    output: Output,
    command: &LearningCommand,
) -> Result<u8, CliError> {
    let mut client = options.connect().await?;
    match command {
        LearningCommand::Stats => {
            let s = client
                .learning
                .get_stats(LearningStatsRequest {})
                .await?
                .into_inner();
            let accuracy = s
                .prequential_accuracy
                .map_or_else(|| "-".to_owned(), |a| format!("{:.1}%", a * 100.0));
            let human = format!(
                "events learned     {}\nduplicates         {}\nevents accepted    {}\n\
                 pending            {}{}\naccuracy           {accuracy} (last {} events)\n\
                 dimension          {}\ncheckpoint         {} (replayed {} at start)",
                s.events_learned,
                s.duplicates,
                s.events_accepted,
                s.pending,
                if s.paused { " (paused)" } else { "" },
                s.accuracy_window_events,
                s.dimension,
                s.checkpoint_sequence,
                s.replayed,
            );
            print(
                output,
                human,
                json!({
                    "events_learned": s.events_learned,
                    "duplicates": s.duplicates,
                    "events_accepted": s.events_accepted,
                    "pending": s.pending,
                    "paused": s.paused,
                    "prequential_accuracy": s.prequential_accuracy,
                    "accuracy_window_events": s.accuracy_window_events,
                    "dimension": s.dimension,
                    "checkpoint_sequence": s.checkpoint_sequence,
                    "replayed": s.replayed,
                }),
            );
            Ok(exit::OK)
        }
        LearningCommand::Predict { features } => {
            let features = parse_features(features)?;
            let reply = client
                .learning
                .predict(PredictRequest { features })
                .await?
                .into_inner();
            print(
                output,
                format!("{:.6} (after {} events)", reply.score, reply.events_learned),
                json!({"score": reply.score, "events_learned": reply.events_learned}),
            );
            Ok(exit::OK)
        }
    }
}
