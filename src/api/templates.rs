//! The template catalogue as the contract shows it.

use crate::api::convert::method_to_proto;
use crate::domain::templates::{DefaultOrdering, FieldRequirement, Normalisation, Template};
use crate::proto;

pub fn template_to_proto(template: &Template) -> proto::Template {
    proto::Template {
        id: template.id.to_string(),
        display_name: template.name.to_string(),
        description: template.description.to_string(),
        method: method_to_proto(template.method) as i32,
        path: template.path.to_string(),
        path_parameters: template
            .parameters
            .iter()
            .map(|parameter| proto::PathParameter {
                name: parameter.name.to_string(),
                description: parameter.description.to_string(),
                required: parameter.required,
            })
            .collect(),
        required_fields: template.required.iter().map(requirement_to_proto).collect(),
        allowed_values: template
            .allowed_values
            .iter()
            .map(|allowed| proto::AllowedValues {
                field: allowed.field.to_string(),
                values: allowed
                    .values
                    .iter()
                    .map(|value| value.to_string())
                    .collect(),
            })
            .collect(),
        normalisations: template
            .normalisations
            .iter()
            .map(describe_normalisation)
            .collect(),
        batchable: template.batchable,
        ordered_by_path: template.default_ordering == DefaultOrdering::RenderedPath,
    }
}

fn requirement_to_proto(requirement: &FieldRequirement) -> proto::FieldRequirement {
    let description = match requirement.any_of {
        [only] => format!("{only} is required"),
        [first, others @ ..] => format!(
            "{first} is required (also accepted as {})",
            others.join(" or ")
        ),
        [] => String::new(),
    };
    proto::FieldRequirement {
        any_of: requirement
            .any_of
            .iter()
            .map(|field| field.to_string())
            .collect(),
        description,
    }
}

fn describe_normalisation(normalisation: &Normalisation) -> String {
    match normalisation {
        Normalisation::MapValue { field, from, to } => {
            format!("{field} {from:?} is sent as {to:?}")
        }
        Normalisation::Rename { from, to } => format!("{from} is sent as {to}"),
        Normalisation::FanOut { from, into } => {
            format!("each element of the {from} array becomes its own call, carrying it as {into}")
        }
    }
}
